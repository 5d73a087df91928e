from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.settings import (
    ConfigError,
    ModelOverride,
    Overrides,
    Settings,
    StoreSettings,
    UISettings,
    is_loopback_host,
    load_settings,
)
from policies.pages import Fidelity, PageType, Pin, Scope
from policies.tenant import DEFAULT_TYPES, Budget, CacheMode, CachePolicy, ClassifierRule, Weights

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **overrides: object) -> Settings:
    return load_settings(write(tmp_path, text), env or {}, Overrides(**overrides))  # type: ignore[arg-type]


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None, **overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env, **overrides)
    return str(caught.value)


def example_block(config: str) -> str:
    """The commented-out tenant example of the repo's config.yaml, uncommented."""
    lines = config.splitlines()
    start = lines.index("# --- tenant example ---") + 1
    end = lines.index("# --- end tenant example ---")
    return "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start:end])


ACME = """
tenants:
  acme:
    api_keys: [sk-acme]
"""


# ---------------------------------------------------------------- defaults and the repo's config.yaml


def test_no_file_gives_open_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.open
    assert [t.name for t in settings.tenants] == ["default"]
    assert settings.tenants[0].api_keys == ()
    assert settings.store == StoreSettings("embedded", Path(".clawvm-data"))
    assert settings.server.port == 4000 and settings.server.host == "127.0.0.1"
    assert settings.server.default_context_window == 128000
    assert settings.server.max_body_bytes == 67108864 and settings.server.max_header_bytes == 65536
    assert not settings.server.log_content and not settings.server.log_timings
    assert settings.upstream.api_base == "https://api.openai.com/v1"
    assert settings.upstream.api_key is None
    assert settings.upstream.timeout == 600.0
    assert settings.tenants[0].policy.types == DEFAULT_TYPES


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", {})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "# nothing\n") == load_settings(None, {})


def test_repo_config_loads_with_empty_env() -> None:
    settings = load_settings(REPO_CONFIG, {})
    assert settings == load_settings(None, {})


def test_repo_config_reads_its_env_references() -> None:
    env = {"CLAWVM_PORT": "4100", "OPENAI_API_KEY": "sk-up", "CLAWVM_STORE_URL": "redis://h:6379/1"}
    settings = load_settings(REPO_CONFIG, env)
    assert settings.server.port == 4100
    assert settings.upstream.api_key == "sk-up"
    assert settings.store.url == "redis://h:6379/1"


def test_repo_config_tenant_example_is_valid(tmp_path: Path) -> None:
    config = REPO_CONFIG.read_text(encoding="utf-8")
    settings = load(tmp_path, config + "\n" + example_block(config) + "\n")
    assert not settings.open
    acme, beta = settings.tenants
    assert (acme.name, beta.name) == ("acme", "beta")
    assert acme.api_keys == ("sk-acme-change-me", "sk-acme-literal")
    assert acme.policy.budget == Budget(16000, None, 4096, 0.02)
    never = ClassifierRule(r"\bNEVER\b", PageType.CONSTRAINT, frozenset({"user", "system"}))
    assert acme.policy.rules == (never,)
    assert acme.upstream.upstream_model("gpt-4o") == "acme-gpt-4o"
    assert beta.upstream.model_map == {}


def test_same_input_same_settings(tmp_path: Path) -> None:
    text = REPO_CONFIG.read_text(encoding="utf-8")
    text += "\n" + example_block(text)
    first, second = load(tmp_path, text), load(tmp_path, text)
    assert first == second
    assert repr(first) == repr(second)


# ---------------------------------------------------------------- tenants and policies


FULL_TENANT = """
tenants:
  acme:
    api_keys: [sk-1, sk-2]
    budget: {max_prompt_tokens: 16000, window_fraction: 0.5, output_reserve: 0, safety_margin: 0}
    pages:
      constraint: {floor: full, pin: soft}
      preference: {floor: structured, pin: none, scope: session, base_utility: 1.5}
    weights: {pin_hard: 3, pin_soft: 0.5, recency: 0.1, recency_decay: 1, recompute: 0}
    rules:
      - {pattern: "\\\\bNEVER\\\\b", type: constraint, roles: [user, system]}
      - {pattern: "call me \\\\w+", type: preference}
"""


def test_tenant_policy_is_built(tmp_path: Path) -> None:
    (acme,) = load(tmp_path, FULL_TENANT).tenants
    policy = acme.policy
    assert policy.name == "acme"
    assert policy.budget == Budget(16000, 0.5, 0, 0.0)
    assert policy.type_policy(PageType.CONSTRAINT).floor is Fidelity.FULL
    assert policy.type_policy(PageType.CONSTRAINT).pin is Pin.SOFT
    assert policy.type_policy(PageType.CONSTRAINT).scope is DEFAULT_TYPES[PageType.CONSTRAINT].scope
    preference = policy.type_policy(PageType.PREFERENCE)
    assert preference.floor is Fidelity.STRUCTURED
    assert preference.pin is Pin.NONE
    assert preference.scope is Scope.SESSION
    assert preference.base_utility == 1.5
    assert policy.type_policy(PageType.EVIDENCE) == DEFAULT_TYPES[PageType.EVIDENCE]
    assert policy.weights == Weights(3.0, 0.5, 0.1, 1.0, 0.0)
    assert policy.rules[0] == ClassifierRule(r"\bNEVER\b", PageType.CONSTRAINT, frozenset({"user", "system"}))
    assert policy.rules[1].roles == ClassifierRule("x", PageType.PLAN).roles


def test_the_cache_policy_is_per_tenant_and_stable_by_default(tmp_path: Path) -> None:
    text = FULL_TENANT + "  beta:\n    api_keys: [sk-b]\n    policy: {cache: tight}\n"
    text += "  gamma:\n    api_keys: [sk-c]\n    policy: {low_water: 0.5}\n"
    acme, beta, gamma = load(tmp_path, text).tenants
    assert acme.policy.cache == CachePolicy() and acme.policy.cache.mode is CacheMode.STABLE
    assert acme.policy.cache.target == acme.policy.cache.low_water < 1.0
    assert beta.policy.cache.mode is CacheMode.TIGHT and beta.policy.cache.target == 1.0
    assert gamma.policy.cache == CachePolicy(CacheMode.STABLE, 0.5) and gamma.policy.cache.target == 0.5


def test_the_intent_page_type_is_configurable_and_defaults_to_a_pinned_user_page(tmp_path: Path) -> None:
    default = DEFAULT_TYPES[PageType.INTENT]
    assert (default.floor, default.pin, default.scope) == (Fidelity.STRUCTURED, Pin.HARD, Scope.PROJECT)
    text = ACME + "    pages: {intent: {scope: session, base_utility: 2}}\n"
    text += "    rules:\n      - {pattern: 'size \\\\w+', type: intent, roles: [user]}\n"
    (acme,) = load(tmp_path, text).tenants
    intent = acme.policy.type_policy(PageType.INTENT)
    assert (intent.scope, intent.base_utility, intent.pin) == (Scope.SESSION, 2.0, Pin.HARD)
    assert acme.policy.rules == (ClassifierRule(r"size \\w+", PageType.INTENT, frozenset({"user"})),)


def test_tenants_keep_config_order(tmp_path: Path) -> None:
    text = "tenants:\n  zed: {api_keys: [k1]}\n  alpha: {api_keys: [k2]}\n  mid: {api_keys: [k3]}\n"
    assert [t.name for t in load(tmp_path, text).tenants] == ["zed", "alpha", "mid"]


def test_api_keys_are_not_in_repr(tmp_path: Path) -> None:
    settings = load(tmp_path, ACME + "upstream: {api_key: sk-upstream-secret}\n")
    assert "sk-acme" not in repr(settings)
    assert "sk-upstream-secret" not in repr(settings)


def test_tenant_needs_keys(tmp_path: Path) -> None:
    expected = "tenants.acme.api_keys: a tenant needs at least one API key"
    assert error(tmp_path, "tenants:\n  acme: {}\n") == expected
    assert "tenants.acme.api_keys" in error(tmp_path, "tenants:\n  acme: {api_keys: []}\n")


def test_empty_key_is_rejected(tmp_path: Path) -> None:
    message = error(tmp_path, 'tenants:\n  acme: {api_keys: ["${K:-}"]}\n')
    assert message == "tenants.acme.api_keys[0]: expected a non-empty string, got an empty string"


def test_duplicate_keys_across_tenants(tmp_path: Path) -> None:
    text = "tenants:\n  a: {api_keys: [k1, shared]}\n  b: {api_keys: [shared]}\n"
    message = error(tmp_path, text)
    assert message == "tenants.b.api_keys[0]: duplicate API key (also at tenants.a.api_keys[1])"
    assert "shared" not in message


def test_duplicate_keys_within_a_tenant(tmp_path: Path) -> None:
    assert "duplicate API key" in error(tmp_path, "tenants:\n  a: {api_keys: [k1, k1]}\n")


@pytest.mark.parametrize("name", ["bad name", "x" * 65, "é", "a/b"])
def test_bad_tenant_names(tmp_path: Path, name: str) -> None:
    message = error(tmp_path, f'tenants:\n  "{name}": {{api_keys: [k]}}\n')
    assert message.startswith(f"tenants.{name}: a tenant name is 1-64 characters")


def test_good_tenant_name(tmp_path: Path) -> None:
    name = "Acme-1.prod_" + "x" * 52
    assert load(tmp_path, f"tenants:\n  {name}: {{api_keys: [k]}}\n").tenants[0].name == name


def test_empty_tenants_section_is_open(tmp_path: Path) -> None:
    assert load(tmp_path, "tenants: {}\n").open
    assert load(tmp_path, "tenants:\n").open


# ---------------------------------------------------------------- no tenants on an exposed host

EXPOSED_HOSTS = ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "2001:db8::1", "gateway.example.com", "localhost.evil.com"]
LOOPBACK_HOSTS = ["127.0.0.1", "127.3.2.1", "::1", "localhost", "LocalHost", "::ffff:127.0.0.1"]


def assert_names_the_ways_out(message: str) -> None:
    assert "server.allow_unauthenticated: true" in message and "--allow-unauthenticated" in message
    assert "tenants:" in message and "api_keys" in message and "CLAWVM_API_KEYS" in message


@pytest.mark.parametrize("host", EXPOSED_HOSTS)
def test_an_open_gateway_on_a_non_loopback_host_is_refused(tmp_path: Path, host: str) -> None:
    message = error(tmp_path, "server:\n  port: 4000\n", host=host)
    assert message.startswith(f"server.host: {host!r} is not a loopback address and no tenants are configured")
    assert_names_the_ways_out(message)
    assert_names_the_ways_out(error(tmp_path, f"server:\n  host: {json.dumps(host)}\n"))  # from the file too


@pytest.mark.parametrize("tenants", ["tenants: {}\n", "tenants:\n"])
def test_an_empty_tenants_section_on_a_non_loopback_host_is_refused(tmp_path: Path, tenants: str) -> None:
    assert_names_the_ways_out(error(tmp_path, tenants, host="0.0.0.0"))


def test_the_repo_config_on_all_interfaces_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(REPO_CONFIG, {}, Overrides(host="0.0.0.0"))
    assert_names_the_ways_out(str(caught.value))


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_an_open_gateway_on_loopback_stays_open(tmp_path: Path, host: str) -> None:
    assert load(tmp_path, "tenants: {}\n", host=host).open
    assert load_settings(None, {}, Overrides(host=host)).open


def test_loopback_hosts_are_only_loopback_addresses_and_localhost() -> None:
    assert all(is_loopback_host(h) for h in LOOPBACK_HOSTS)
    assert not any(is_loopback_host(h) for h in [*EXPOSED_HOSTS, "", "0", "127.1", "::ffff:10.0.0.1"])


def test_allow_unauthenticated_serves_open_on_any_host(tmp_path: Path) -> None:
    by_key = load(tmp_path, "server:\n  allow_unauthenticated: true\n", host="0.0.0.0")
    by_flag = load(tmp_path, "server:\n  allow_unauthenticated: false\n", host="0.0.0.0", allow_unauthenticated=True)
    by_env = load(tmp_path, "server:\n  allow_unauthenticated: ${OPEN}\n", {"OPEN": "yes"}, host="::")
    for settings in (by_key, by_flag, by_env):
        assert settings.open and settings.server.allow_unauthenticated
    assert not load_settings(None, {}).server.allow_unauthenticated


def test_allow_unauthenticated_must_be_a_boolean(tmp_path: Path) -> None:
    message = error(tmp_path, "server:\n  allow_unauthenticated: 1\n")
    assert message == "server.allow_unauthenticated: expected true or false, got 1"


def test_tenants_on_a_non_loopback_host_need_no_permission(tmp_path: Path) -> None:
    settings = load(tmp_path, ACME, host="0.0.0.0")
    assert not settings.open and settings.server.host == "0.0.0.0"


def test_clawvm_api_keys_give_the_default_tenant_its_keys(tmp_path: Path) -> None:
    settings = load_settings(REPO_CONFIG, {"CLAWVM_API_KEYS": " sk-one , sk-two"}, Overrides(host="0.0.0.0"))
    assert not settings.open
    [tenant] = settings.tenants
    assert (tenant.name, tenant.api_keys) == ("default", ("sk-one", "sk-two"))
    assert load_settings(None, {"CLAWVM_API_KEYS": "sk-one"}, Overrides(budget=900)).tenants[0].policy.budget == Budget(
        max_prompt_tokens=900
    )
    assert load_settings(None, {"CLAWVM_API_KEYS": "  "}).open  # blank counts as unset


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sk-one,,sk-two", "CLAWVM_API_KEYS: key 2 is empty"),
        ("sk-one,", "CLAWVM_API_KEYS: key 2 is empty"),
        ("sk-one,sk-one", "CLAWVM_API_KEYS: a key is listed twice"),
        ("sk one", "CLAWVM_API_KEYS: key 1 contains whitespace or control characters"),
    ],
)
def test_bad_clawvm_api_keys_are_refused_without_echoing_them(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"CLAWVM_API_KEYS": value})
    assert str(caught.value).startswith(expected) and "sk-one" not in str(caught.value)


def test_clawvm_api_keys_beside_a_tenants_section_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, ACME, {"CLAWVM_API_KEYS": "sk-env"})
    assert message.startswith("CLAWVM_API_KEYS: set, but config.yaml lists tenants") and "sk-env" not in message


# ---------------------------------------------------------------- validation messages


VALIDATION_CASES = [
    (
        ACME + "    budget: {max_prompt_tokens: -5}\n",
        "tenants.acme.budget.max_prompt_tokens: expected a positive integer, got -5",
    ),
    (
        ACME + "    budgt: {}\n",
        "unknown key tenants.acme.budgt (did you mean budget?)",
    ),
    (
        "servr: {}\n",
        "unknown key servr (did you mean server?)",
    ),
    (
        "server: {port: 0}\n",
        "server.port: expected an integer from 1 to 65535, got 0",
    ),
    (
        "server: {port: 70000}\n",
        "server.port: expected an integer from 1 to 65535, got 70000",
    ),
    (
        "server: {port: '4000'}\n",
        "server.port: expected an integer from 1 to 65535, got '4000'",
    ),
    (
        "server: {port: true}\n",
        "server.port: expected an integer from 1 to 65535, got true",
    ),
    (
        "server: {port: 4.5}\n",
        "server.port: expected an integer from 1 to 65535, got 4.5",
    ),
    (
        "server: {max_body_bytes: 0}\n",
        "server.max_body_bytes: expected a positive integer, got 0",
    ),
    (
        "server: {log_content: 'yes'}\n",
        "server.log_content: expected true or false, got 'yes'",
    ),
    (
        "server: {log_timings: 1}\n",
        "server.log_timings: expected true or false, got 1",
    ),
    (
        "server: {host: null}\n",
        "server.host: expected a non-empty string, got null",
    ),
    (
        "server: [1]\n",
        "server: expected a mapping, got a list",
    ),
    (
        "- 1\n- 2\n",
        "top level: expected a mapping, got a list",
    ),
    (
        "just text\n",
        "top level: expected a mapping, got 'just text'",
    ),
    (
        "store: {url: 'http://x'}\n",
        'store.url: expected "embedded" or a redis://, rediss:// or unix:// URL '
        "(redis+cluster://host:port[,host:port...] for a Redis Cluster)",
    ),
    (
        "store: {outage_queue: 0}\n",
        "store.outage_queue: expected a positive integer, got 0",
    ),
    (
        "store: {outage_queue_bytes: 0}\n",
        "store.outage_queue_bytes: expected a positive integer, got 0",
    ),
    (
        "store: {outage_queue_bytes: 1.5}\n",
        "store.outage_queue_bytes: expected a positive integer, got 1.5",
    ),
    (
        "store: {appendfsync: never}\n",
        "store.appendfsync: expected one of everysec, always, got 'never'",
    ),
    (
        "upstream: {api_base: 'ftp://x'}\n",
        "upstream.api_base: expected an http:// or https:// URL, got 'ftp://x'",
    ),
    (
        "upstream: {timeout_seconds: 0}\n",
        "upstream.timeout_seconds: expected a number in (0, inf), got 0",
    ),
    (
        "upstream: {retries: -1}\n",
        "upstream.retries: expected an integer from 0 to 10, got -1",
    ),
    (
        "upstream: {backoff: fast}\n",
        "upstream.backoff: expected a number, got 'fast'",
    ),
    (
        "upstream: {stream_idle_timeout: 0}\n",
        "upstream.stream_idle_timeout: expected a number in (0, inf), got 0",
    ),
    (
        "upstream: {model_map: [a]}\n",
        "upstream.model_map: expected a mapping, got a list",
    ),
    (
        "upstream: {model_map: {a: ''}}\n",
        "upstream.model_map.a: expected a non-empty string, got ''",
    ),
    (
        "models: {m: {context_window: 0}}\n",
        "models.m.context_window: expected a positive integer, got 0",
    ),
    (
        "models: {m: {encoding: r50k_base}}\n",
        "models.m.encoding: expected one of cl100k_base, o200k_base, o200k_harmony, p50k_base, got 'r50k_base'",
    ),
    (
        "models: {m: {size: 1}}\n",
        "unknown key models.m.size (expected one of: context_window, encoding)",
    ),
    (
        ACME + "    budget: {window_fraction: 0}\n",
        "tenants.acme.budget.window_fraction: expected a number in (0, 1], got 0",
    ),
    (
        ACME + "    budget: {window_fraction: 1.5}\n",
        "tenants.acme.budget.window_fraction: expected a number in (0, 1], got 1.5",
    ),
    (
        ACME + "    budget: {safety_margin: 1}\n",
        "tenants.acme.budget.safety_margin: expected a number in [0, 1), got 1",
    ),
    (
        ACME + "    budget: {output_reserve: -1}\n",
        "tenants.acme.budget.output_reserve: expected a non-negative integer, got -1",
    ),
    (
        ACME + "    pages: {constraint: {floor: none}}\n",
        "tenants.acme.pages.constraint.floor: expected one of pointer, structured, compressed, full, got 'none'",
    ),
    (
        ACME + "    pages: {constraint: {pin: always}}\n",
        "tenants.acme.pages.constraint.pin: expected one of hard, soft, none, got 'always'",
    ),
    (
        ACME + "    pages: {preference: {scope: global}}\n",
        "tenants.acme.pages.preference.scope: expected one of session, project, got 'global'",
    ),
    (
        ACME + "    pages: {preference: {base_utility: -1}}\n",
        "tenants.acme.pages.preference.base_utility: expected a number in [0, inf), got -1",
    ),
    (
        ACME + "    pages: {intent: {scope: global}}\n",
        "tenants.acme.pages.intent.scope: expected one of session, project, got 'global'",
    ),
    (
        ACME + "    pages: {memo: {pin: hard}}\n",
        "unknown key tenants.acme.pages.memo "
        "(expected one of: bootstrap, constraint, plan, preference, intent, evidence, conversation)",
    ),
    (
        ACME + "    weights: {recency_decay: 0}\n",
        "tenants.acme.weights.recency_decay: expected a number in (0, 1], got 0",
    ),
    (
        ACME + "    policy: {cache: loose}\n",
        "tenants.acme.policy.cache: expected one of stable, tight, got 'loose'",
    ),
    (
        ACME + "    policy: {low_water: 0}\n",
        "tenants.acme.policy.low_water: expected a number in (0, 1], got 0",
    ),
    (
        ACME + "    policy: {lowwater: 0.5}\n",
        "unknown key tenants.acme.policy.lowwater (did you mean low_water?)",
    ),
    (
        ACME + "    weights: {pin_hard: .nan}\n",
        "tenants.acme.weights.pin_hard: expected a number, got nan",
    ),
    (
        ACME + "    rules: [{pattern: x}]\n",
        "tenants.acme.rules[0].type: required",
    ),
    (
        ACME + "    rules: [{pattern: x, type: memo}]\n",
        "tenants.acme.rules[0].type: "
        "expected one of bootstrap, constraint, plan, preference, intent, evidence, conversation, got 'memo'",
    ),
    (
        ACME + "    rules: [{pattern: x, type: plan, roles: [robot]}]\n",
        "tenants.acme.rules[0].roles[0]: expected one of assistant, developer, system, tool, user, got 'robot'",
    ),
    (
        ACME + "    rules: [{pattern: x, type: plan, roles: []}]\n",
        "tenants.acme.rules[0].roles: expected at least one role",
    ),
    (
        ACME + "    rules: {pattern: x}\n",
        "tenants.acme.rules: expected a list, got a dict",
    ),
    (
        ACME + "    upstream: {forward_client_key: 1}\n",
        "tenants.acme.upstream.forward_client_key: expected true or false, got 1",
    ),
    (
        ACME + "    upstream: {account_routes: 'yes please'}\n",
        "tenants.acme.upstream.account_routes: expected true or false, got 'yes please'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALIDATION_CASES)
def test_validation_messages(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text) == expected


def test_bad_regex(tmp_path: Path) -> None:
    message = error(tmp_path, ACME + "    rules: [{pattern: '(unclosed', type: constraint}]\n")
    assert message.startswith("tenants.acme.rules[0].pattern: invalid regular expression: ")


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    assert error(tmp_path, "tenants:\n  a: {api_keys: [12345]}\n") == (
        "tenants.a.api_keys[0]: expected a non-empty string, got a value of type int"
    )
    assert "hunter2" not in error(tmp_path, "store: {url: 'http://u:hunter2@h'}\n")


# ---------------------------------------------------------------- YAML problems


def test_yaml_syntax_error_has_line_info(tmp_path: Path) -> None:
    message = error(tmp_path, "server:\n  port: [1, 2\n")
    assert "invalid YAML" in message
    assert re.search(r"line \d+, column \d+", message)


def test_unquoted_env_reference_in_flow_list(tmp_path: Path) -> None:
    message = error(tmp_path, "tenants:\n  a:\n    api_keys: [${K}, other]\n")
    assert "invalid YAML: line 3" in message


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    message = error(tmp_path, "server:\n  port: 1\n  port: 2\n")
    assert "duplicate key 'port'" in message and "line 3" in message


def test_non_string_keys_are_rejected(tmp_path: Path) -> None:
    message = error(tmp_path, "models:\n  123: {context_window: 5}\n")
    assert message == "models.123: keys must be strings, got 123"


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "tenants:\n  a: &base\n    api_keys: [k1]\n    budget: {max_prompt_tokens: 100}\n"
        "  b:\n    <<: *base\n    api_keys: [k2]\n"
    )
    a, b = load(tmp_path, text).tenants
    assert b.policy.budget.max_prompt_tokens == 100 and b.api_keys == ("k2",)


# ---------------------------------------------------------------- environment references


def test_env_reference_resolves(tmp_path: Path) -> None:
    text = 'tenants:\n  acme:\n    api_keys: ["${ACME_KEY}", sk-literal]\n'
    settings = load(tmp_path, text, {"ACME_KEY": "sk-from-env"})
    assert settings.tenants[0].api_keys == ("sk-from-env", "sk-literal")


def test_missing_env_reference_names_key_and_variable(tmp_path: Path) -> None:
    text = 'tenants:\n  acme:\n    api_keys: ["${ACME_KEY}"]\n'
    message = error(tmp_path, text)
    assert message.startswith("tenants.acme.api_keys[0]: environment variable ACME_KEY is not set")


def test_env_default_and_embedding(tmp_path: Path) -> None:
    text = "upstream:\n  api_base: http://${HOST:-localhost}:${PORT:-8000}/v1\n"
    assert load(tmp_path, text).upstream.api_base == "http://localhost:8000/v1"
    assert load(tmp_path, text, {"PORT": "9"}).upstream.api_base == "http://localhost:9/v1"


def test_env_reference_can_be_a_number_or_boolean(tmp_path: Path) -> None:
    text = "server:\n  port: ${PORT:-4000}\n  log_content: ${LOG:-false}\nupstream:\n  timeout_seconds: ${T:-2.5}\n"
    settings = load(tmp_path, text, {"PORT": "8123", "LOG": "true"})
    assert settings.server.port == 8123 and settings.server.log_content
    assert settings.upstream.timeout == 2.5
    message = error(tmp_path, text, {"PORT": "abc"})
    assert message == "server.port: expected an integer from 1 to 65535, got 'abc'"


def test_env_reference_expanding_to_empty_means_unset(tmp_path: Path) -> None:
    text = ACME + "    budget: {max_prompt_tokens: '${BUDGET:-}'}\nupstream: {api_key: '${KEY:-}'}\n"
    settings = load(tmp_path, text, {"OPENAI_API_KEY": "sk-fallback"})
    assert settings.tenants[0].policy.budget.max_prompt_tokens is None
    assert settings.upstream.api_key == "sk-fallback"


def test_literal_dollar_text_is_kept(tmp_path: Path) -> None:
    text = ACME + "    rules: [{pattern: 'costs \\$5', type: constraint}]\n"
    assert load(tmp_path, text).tenants[0].policy.rules[0].pattern == "costs \\$5"


# ---------------------------------------------------------------- upstream precedence


def test_upstream_base_precedence(tmp_path: Path) -> None:
    env = {"CLAWVM_UPSTREAM_BASE_URL": "http://env:1/v1"}
    assert load_settings(None, {}).upstream.api_base == "https://api.openai.com/v1"
    assert load_settings(None, env).upstream.api_base == "http://env:1/v1"
    configured = "upstream: {api_base: 'http://config:2/v1/'}\n"
    assert load(tmp_path, configured, env).upstream.api_base == "http://config:2/v1"
    assert load(tmp_path, configured, env, upstream="http://flag:3").upstream.api_base == "http://flag:3"


def test_upstream_key_precedence(tmp_path: Path) -> None:
    env = {"CLAWVM_UPSTREAM_API_KEY": "sk-clawvm", "OPENAI_API_KEY": "sk-openai"}
    assert load_settings(None, {"OPENAI_API_KEY": "sk-openai"}).upstream.api_key == "sk-openai"
    assert load_settings(None, env).upstream.api_key == "sk-clawvm"
    assert load(tmp_path, "upstream: {api_key: sk-config}\n", env).upstream.api_key == "sk-config"


def test_tenant_upstream_overrides_field_by_field(tmp_path: Path) -> None:
    text = (
        "upstream:\n  api_base: http://default/v1\n  api_key: sk-default\n  timeout_seconds: 30\n"
        "  model_map: {gpt-4o: dep-a, gpt-4: dep-b}\n"
        + ACME
        + "    upstream: {api_key: sk-acme-up, model_map: {gpt-4o: acme-dep}, forward_client_key: true}\n"
        "  plain:\n    api_keys: [k2]\n"
    )
    settings = load(tmp_path, text, upstream="http://flag/v1")
    acme, plain = settings.tenants
    assert acme.upstream.api_base == "http://flag/v1"
    assert acme.upstream.api_key == "sk-acme-up"
    assert acme.upstream.timeout == 30.0
    assert acme.upstream.forward_client_key
    assert dict(acme.upstream.model_map) == {"gpt-4o": "acme-dep"}
    assert acme.upstream.upstream_model("gpt-4") == "gpt-4"
    assert plain.upstream == settings.upstream
    assert plain.upstream.upstream_model("gpt-4") == "dep-b"


def test_retries_and_stream_timeouts_default_and_override_per_tenant(tmp_path: Path) -> None:
    text = "upstream:\n  retries: 4\n  backoff: 0.1\n" + ACME + "    upstream: {retries: 0, stream_idle_timeout: 30}\n"
    settings = load(tmp_path, text)
    (acme,) = settings.tenants
    assert (settings.upstream.retries, settings.upstream.backoff, settings.upstream.stream_idle_timeout) == (
        4,
        0.1,
        120.0,
    )
    assert (acme.upstream.retries, acme.upstream.backoff, acme.upstream.stream_idle_timeout) == (0, 0.1, 30.0)
    assert (acme.upstream.backoff_max, acme.upstream.retry_after_max) == (8.0, 30.0)


def test_tenant_api_base_beats_the_flag(tmp_path: Path) -> None:
    text = ACME + "    upstream: {api_base: 'http://acme/v1'}\n"
    assert load(tmp_path, text, upstream="http://flag/v1").tenants[0].upstream.api_base == "http://acme/v1"


# ---------------------------------------------------------------- overrides


def test_overrides_host_port_store(tmp_path: Path) -> None:
    text = ACME + "server: {host: 0.0.0.0, port: 5000}\nstore: {url: 'redis://config:6379/0', data_dir: /var/x}\n"
    settings = load(tmp_path, text, host="10.0.0.1", port=5001, store="rediss://flag:1/2")
    assert (settings.server.host, settings.server.port) == ("10.0.0.1", 5001)
    assert settings.store == StoreSettings("rediss://flag:1/2", Path("/var/x"))
    assert settings.store.outage_queue == 10_000  # the default
    assert load(tmp_path, "store: {outage_queue: 5}\n").store.outage_queue == 5
    assert settings.store.outage_queue_bytes == 64 * 1024 * 1024  # the default
    assert load(tmp_path, "store: {outage_queue_bytes: 1048576}\n").store.outage_queue_bytes == 1_048_576
    assert settings.store.appendfsync == "everysec"  # the default
    assert load(tmp_path, "store: {appendfsync: always}\n").store.appendfsync == "always"
    assert not settings.store.embedded
    assert load(tmp_path, text, store="embedded").store.embedded


def test_a_redis_cluster_url_is_accepted(tmp_path: Path) -> None:
    for url in ("redis+cluster://h1:7000,h2:7001", "rediss+cluster://u:p@h1:7000/0"):
        assert load(tmp_path, f"store: {{url: '{url}'}}\n").store.url == url
        assert load(tmp_path, "", store=url).store.url == url


def test_overrides_are_validated(tmp_path: Path) -> None:
    assert error(tmp_path, "", port=0) == "--port: expected an integer from 1 to 65535, got 0"
    assert error(tmp_path, "", store="mysql://x").startswith("--store: expected")
    message = error(tmp_path, "", upstream="nope")
    assert message == "--upstream: expected an http:// or https:// URL, got 'nope'"
    assert error(tmp_path, "", budget=0) == "--budget: expected a positive integer, got 0"


def test_config_is_validated_even_when_overridden(tmp_path: Path) -> None:
    assert error(tmp_path, "server: {port: -1}\n", port=5000).startswith("server.port:")


def test_budget_override_open(tmp_path: Path) -> None:
    settings = load_settings(None, {}, Overrides(budget=9000))
    assert settings.tenants[0].policy.budget.max_prompt_tokens == 9000


def test_budget_override_applies_where_unset(tmp_path: Path) -> None:
    text = (
        "tenants:\n  fixed: {api_keys: [k1], budget: {max_prompt_tokens: 100}}\n"
        "  free: {api_keys: [k2], budget: {window_fraction: 0.5}}\n"
        "  bare: {api_keys: [k3]}\n"
    )
    fixed, free, bare = load(tmp_path, text, budget=9000).tenants
    assert fixed.policy.budget.max_prompt_tokens == 100
    assert free.policy.budget.max_prompt_tokens == 9000
    assert free.policy.budget.window_fraction == 0.5
    assert bare.policy.budget.max_prompt_tokens == 9000


# ---------------------------------------------------------------- models


def test_model_overrides(tmp_path: Path) -> None:
    text = "models:\n  my-local-llama: {context_window: 32768, encoding: cl100k_base}\n  other: {encoding: null}\n"
    models = load(tmp_path, text).models
    assert models["my-local-llama"] == ModelOverride(32768, "cl100k_base")
    assert models["other"] == ModelOverride(None, None)


def test_settings_are_immutable() -> None:
    settings = load_settings(None, {})
    with pytest.raises(AttributeError):
        settings.open = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.models["x"] = ModelOverride()  # type: ignore[index]


def test_account_routes_are_off_by_default_and_a_key_of_the_tenants_own_opens_them(tmp_path: Path) -> None:
    text = (
        "upstream:\n  api_key: sk-shared\n"
        "tenants:\n"
        "  plain:\n    api_keys: [k1]\n"
        "  same:\n    api_keys: [k2]\n    upstream: {api_key: sk-shared}\n"
        "  own:\n    api_keys: [k3]\n    upstream: {api_key: sk-own}\n"
        "  forwards:\n    api_keys: [k4]\n    upstream: {forward_client_key: true}\n"
        "  allowed:\n    api_keys: [k5]\n    upstream: {account_routes: true}\n"
    )
    settings = load(tmp_path, text)
    owned = {t.name: (t.upstream.own_key, t.upstream.owns_account) for t in settings.tenants}
    assert owned == {
        "plain": (False, False),
        "same": (False, False),  # the shared key written again is still the shared key
        "own": (True, True),
        "forwards": (True, True),
        "allowed": (False, True),  # account routes allowed, but the key (and its organization) is shared
    }
    assert not settings.upstream.account_routes and not settings.upstream.own_key


def test_account_routes_set_on_the_shared_upstream_apply_to_every_tenant(tmp_path: Path) -> None:
    text = "upstream:\n  api_key: sk-shared\n  account_routes: true\n" + ACME
    (acme,) = load(tmp_path, text).tenants
    assert acme.upstream.owns_account and not acme.upstream.own_key
    assert not load(tmp_path, "upstream:\n  api_key: sk-config\n").upstream.own_key  # the open tenant's is shared


# ---------------------------------------------------------------- tenant limits (issue 11)


def test_a_tenant_has_a_finite_concurrency_limit_by_default(tmp_path: Path) -> None:
    (acme,) = load(tmp_path, ACME).tenants
    assert acme.limits.max_concurrent_requests == 64
    assert load(tmp_path, "").tenants[0].limits.max_concurrent_requests == 64  # the open tenant too
    text = ACME + "    limits: {max_concurrent_requests: 3}\n"
    assert load(tmp_path, text).tenants[0].limits.max_concurrent_requests == 3
    unlimited = ACME + "    limits: {max_concurrent_requests: 0}\n"
    assert load(tmp_path, unlimited).tenants[0].limits.max_concurrent_requests == 0


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("{max_concurrent_requests: -1}", "expected a non-negative integer, got -1"),
        ("{max_concurrent_requests: null}", "expected a non-negative integer, got null"),
        ("{max_concurrent_requests: many}", "expected a non-negative integer, got 'many'"),
        ("{max_concurrent_requests: 2.5}", "expected a non-negative integer, got 2.5"),
    ],
)
def test_a_bad_concurrency_limit_names_its_key(tmp_path: Path, limits: str, expected: str) -> None:
    message = error(tmp_path, ACME + f"    limits: {limits}\n")
    assert message == f"tenants.acme.limits.max_concurrent_requests: {expected}"


def test_the_top_level_limits_are_every_tenants_default(tmp_path: Path) -> None:
    assert load(tmp_path, "limits: {max_concurrent_requests: 5}\n").tenants[0].limits.max_concurrent_requests == 5
    text = "limits: {max_concurrent_requests: 5}\n" + ACME + "  other:\n    api_keys: [sk-other]\n"
    text += "    limits: {max_concurrent_requests: 9}\n"
    assert [t.limits.max_concurrent_requests for t in load(tmp_path, text).tenants] == [5, 9]
    message = error(tmp_path, "limits: {max_concurrent_requests: -2}\n")
    assert message == "limits.max_concurrent_requests: expected a non-negative integer, got -2"


def test_an_unknown_limit_is_refused(tmp_path: Path) -> None:
    message = error(tmp_path, ACME + "    limits: {max_concurrent: 3}\n")
    assert message == "unknown key tenants.acme.limits.max_concurrent (did you mean max_concurrent_requests?)"


# ---------------------------------------------------------------- session inspector retention (issue 16)


def test_the_inspectors_retention_defaults_and_is_configurable(tmp_path: Path) -> None:
    assert load(tmp_path, "").ui == UISettings(turns=1000, prompts=20, sessions=1000)
    assert load_settings(REPO_CONFIG, {}).ui == UISettings()  # the repo's config.yaml shows the defaults
    configured = load(tmp_path, "ui: {turns: 50, prompts: 0, sessions: 7}\n").ui
    assert configured == UISettings(turns=50, prompts=0, sessions=7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ui: {turns: -1}\n", "ui.turns: expected a non-negative integer, got -1"),
        ("ui: {prompts: many}\n", "ui.prompts: expected a non-negative integer, got 'many'"),
        ("ui: {session: 3}\n", "unknown key ui.session (did you mean sessions?)"),
        ("ui: 5\n", "ui: expected a mapping, got 5"),
    ],
)
def test_a_bad_retention_names_its_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text) == expected
