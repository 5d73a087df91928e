"""config.yaml + environment -> `Settings`, parsed and validated once at start-up.

`load_settings(path, env, overrides)` is the only reader of the config file and of the
environment (the caller passes `env` in; nothing is read at import). Every section is
optional. Any problem raises `ConfigError` naming the key path, e.g.
`tenants.acme.budget.max_prompt_tokens: expected a positive integer, got -5`. Nothing falls
back silently: unknown keys, duplicate keys, wrong types, out-of-range numbers, bad enum
values, regexes that do not compile, unset environment variables and duplicate API keys are
all errors. Secrets (API keys, store URLs) are never echoed in a message.

String values may reference the environment: `${VAR}` (an error if VAR is unset) or
`${VAR:-default}`. A value that is exactly such a reference may stand for a number or a
boolean (`port: ${PORT:-4000}`). An optional value that expands to "" counts as unset.

With no tenants the gateway is *open*: one tenant named "default" accepts any key or none.
That is allowed only on a loopback host (127.0.0.0/8, ::1, localhost) unless the operator says
so (`server.allow_unauthenticated: true` or `--allow-unauthenticated`): anything else that can be
reached from another machine would lend the operator's upstream key to every caller. Without a
`tenants:` section, `$CLAWVM_API_KEYS` (comma-separated) gives the "default" tenant its keys, so a
container can be given authentication by its environment alone.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import urlsplit

import yaml

from gateway.store.embedded import APPENDFSYNC
from gateway.upstream.tokens import OFFLINE_ENCODINGS
from policies.pages import Fidelity, PageType, Pin, Scope
from policies.tenant import (
    DEFAULT_TYPES,
    Budget,
    CacheMode,
    CachePolicy,
    ClassifierRule,
    TenantPolicy,
    TypePolicy,
    Weights,
)
from policies.transcript import ROLES

T = TypeVar("T")
Parse = Callable[[object, str], T]

DEFAULT_API_BASE = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_BASE = "https://api.anthropic.com"
OPEN_TENANT = "default"
ENV_API_KEYS = "CLAWVM_API_KEYS"  # comma-separated keys of the "default" tenant when config.yaml lists none
ALLOW_UNAUTHENTICATED_FLAG = "--allow-unauthenticated"
_TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STORE_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
_BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_FLOORS = ("pointer", "structured", "compressed", "full")
_PAGE_TYPES = tuple(t.value for t in PageType)
_PINS = tuple(p.value for p in Pin)
_SCOPES = tuple(s.value for s in Scope)
_TOP_KEYS = ("server", "store", "upstream", "models", "tenants")
_TOP_KEYS += ("limits",)  # the default tenants.<name>.limits (issue 11): kept on a line of its own
_TOP_KEYS += ("ui",)  # the session inspector's retention (issue 16): kept on a line of its own
_UI_KEYS = ("turns", "prompts", "sessions")
_SERVER_KEYS = (
    "host",
    "port",
    "max_body_bytes",
    "max_header_bytes",
    "default_context_window",
    "log_content",
    "log_timings",
    "session_idle_seconds",
    "allow_unauthenticated",
    "workers",
)
_STORE_KEYS = (
    "url",
    "data_dir",
    "outage_queue",
    "appendfsync",
    "outage_queue_bytes",  # issue 11: the outage queue's byte bound
)
_UPSTREAM_KEYS = (
    "api_base",
    "api_key",
    "forward_client_key",
    "account_routes",
    "timeout_seconds",
    "model_map",
    "retries",
    "backoff",
    "backoff_max",
    "retry_after_max",
    "stream_idle_timeout",
)
_UPSTREAM_KEYS += ("anthropic_base", "anthropic_key")  # issue 14: the Messages API's upstream
_MODEL_KEYS = ("context_window", "encoding")
_TENANT_KEYS = ("api_keys", "budget", "pages", "weights", "rules", "upstream")
_TENANT_KEYS += ("limits",)  # tenants.<name>.limits (issue 11): kept on a line of its own
_TENANT_KEYS += ("policy",)  # tenants.<name>.policy (issue 13): how assembly treats prompt caches
_LIMIT_KEYS = ("max_concurrent_requests",)
_POLICY_KEYS = ("cache", "low_water")
_CACHE_MODES = tuple(m.value for m in CacheMode)
_BUDGET_KEYS = ("max_prompt_tokens", "window_fraction", "output_reserve", "safety_margin")
_PAGE_KEYS = ("floor", "pin", "base_utility", "scope")
_WEIGHT_KEYS = ("pin_hard", "pin_soft", "recency", "recency_decay", "recompute")
_RULE_KEYS = ("pattern", "type", "roles")


class ConfigError(ValueError):
    """config.yaml (or a command-line override) is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = 67_108_864
    max_header_bytes: int = 65_536
    default_context_window: int = 128_000
    log_content: bool = False
    log_timings: bool = False  # one `clawvm.timings` line per turn: its stages and after-response work
    session_idle_seconds: int = 3600  # a session unused this long has ended (a lifecycle event)
    allow_unauthenticated: bool = False  # serve without tenants on a non-loopback host (the operator's choice)
    workers: int | None = None  # worker processes; None: one per CPU (gateway.cli)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """`url` is "embedded" (a redis-server the gateway starts itself, persisting in
    `data_dir`, relative to the working directory) or a redis://, rediss:// or unix:// URL, or
    redis+cluster://host:port[,host:port...] (rediss+cluster://) for a Redis Cluster."""

    url: str = "embedded"
    data_dir: Path = Path(".clawvm-data")
    outage_queue: int = 10_000  # turns held in process while the store is unavailable (gateway.store.outage)
    appendfsync: str = "everysec"  # the embedded server's AOF fsync: "everysec" or "always"
    outage_queue_bytes: int = 67_108_864  # bytes of deferred turns held in process (gateway.store.outage), 64 MiB

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    api_base: str = DEFAULT_API_BASE
    api_key: str | None = field(default=None, repr=False)
    forward_client_key: bool = False
    account_routes: bool = False  # relay account-level routes (files, batches, ...) through this key
    tenant_key: bool = False  # `api_key` is the tenant's own, not the shared default (not a config key)
    timeout: float = 600.0
    model_map: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    retries: int = 2  # attempts after the first, only while no response began (gateway.upstream.retry)
    backoff: float = 0.5  # seconds before the first retry, doubling, with jitter
    backoff_max: float = 8.0  # longest backoff wait
    retry_after_max: float = 30.0  # longest upstream Retry-After waited for; a longer one is relayed
    stream_idle_timeout: float = 120.0  # a stream silent this long ends with an error event
    anthropic_base: str = DEFAULT_ANTHROPIC_BASE  # where /v1/messages turns go (no /v1: Anthropic's convention)
    anthropic_key: str | None = field(default=None, repr=False)  # sent as x-api-key
    anthropic_tenant_key: bool = False  # `anthropic_key` is the tenant's own (not a config key)

    @property
    def own_key(self) -> bool:
        """The upstream key is the tenant's: forwarded from the client, or set for this tenant alone."""
        return self.forward_client_key or self.tenant_key

    @property
    def owns_account(self) -> bool:
        """Account-level routes (gateway.api.relay) may be relayed: the tenant's own key, or allowed."""
        return self.own_key or self.account_routes

    @property
    def owns_anthropic_account(self) -> bool:
        """The same for the Messages API upstream: its key forwarded, the tenant's own, or allowed."""
        return self.forward_client_key or self.anthropic_tenant_key or self.account_routes

    def upstream_model(self, model: str) -> str:
        """The name to send upstream for the model the agent asked for."""
        return self.model_map.get(model, model)


@dataclass(frozen=True, slots=True)
class ModelOverride:
    context_window: int | None = None
    encoding: str | None = None


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What one tenant may use of one gateway process: the top-level `limits` section is every
    tenant's default (the open tenant's too), `tenants.<name>.limits` overrides it field by field."""

    max_concurrent_requests: int = 64  # requests in flight at once (gateway.api.limits); 0 = no limit


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    api_keys: tuple[str, ...] = field(repr=False)
    policy: TenantPolicy
    upstream: UpstreamSettings
    limits: TenantLimits = TenantLimits()


@dataclass(frozen=True, slots=True)
class UISettings:
    """What the store keeps for the session inspector (`GET /ui`, gateway.observability.inspector): per-turn
    records and forwarded prompts per session, and sessions listed per tenant. 0 keeps none."""

    turns: int = 1000  # per-turn records of one session (heat map, timeline), the newest kept
    prompts: int = 20  # forwarded prompts (with what the agent sent) of one session, the newest kept
    sessions: int = 1000  # sessions in a tenant's list, the most recently active kept


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    store: StoreSettings
    upstream: UpstreamSettings
    models: Mapping[str, ModelOverride]
    tenants: tuple[Tenant, ...]
    open: bool
    ui: UISettings = UISettings()

    def tenant(self, name: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line flags; they win over config.yaml."""

    host: str | None = None
    port: int | None = None
    upstream: str | None = None  # api_base of the default upstream (tenants' own api_base still wins)
    budget: int | None = None  # max_prompt_tokens wherever config.yaml sets none
    store: str | None = None  # "embedded" or a Redis URL
    allow_unauthenticated: bool = False  # --allow-unauthenticated: only ever turns the config's value on
    workers: int | None = None  # --workers


def load_settings(path: Path | None, env: Mapping[str, str], overrides: Overrides = Overrides()) -> Settings:
    """Read and validate everything once. `path` None means no file: all defaults, open."""
    raw = {} if path is None else _read_config(path)
    top = _section(_expand(raw, env, ""), "", _TOP_KEYS)
    configured = _upstream(top.raw("upstream"), "upstream", _env_upstream(env))
    upstream = _apply_upstream_override(configured, overrides)
    tenants = _tenants(top.raw("tenants"), upstream, overrides)
    if env.get(ENV_API_KEYS, "").strip() and tenants:
        raise ConfigError(f"{ENV_API_KEYS}: set, but config.yaml lists tenants; put the keys in a tenant's api_keys")
    tenants = tenants or _env_tenant(env, upstream, overrides)
    server = _server(top.raw("server"), overrides)
    if not tenants:
        _check_open_exposure(server)
    return Settings(
        server=server,
        store=_store(top.raw("store"), overrides),
        upstream=upstream,
        models=_models(top.raw("models")),
        tenants=_limited(tenants or (_open_tenant(upstream, overrides),), top),
        open=not tenants,
        ui=_ui(top.raw("ui")),
    )


# ---------------------------------------------------------------- the file


def _read_config(path: Path) -> object:
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8: {exc}") from exc
    try:
        loaded = yaml.load(source, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from exc
    return {} if loaded is None else loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context}"
    return str(exc)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # SafeLoader itself rejects unhashable keys
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                problem = f"duplicate key {key!r}"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# ---------------------------------------------------------------- environment references


class _EnvText(str):
    """A string that came from expanding `${...}`: it may stand for a number or a boolean."""


def _expand(value: object, env: Mapping[str, str], path: str) -> object:
    """Replace `${VAR}` / `${VAR:-default}` in every string value (keys are left alone)."""
    if isinstance(value, str):
        return _expand_text(value, env, path) if "${" in value else value
    if isinstance(value, dict):
        return {k: _expand(v, env, _child(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _expand_text(text: str, env: Mapping[str, str], path: str) -> _EnvText:
    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is None:
            hint = f"write ${{{name}:-default}} for a fallback"
            raise ConfigError(f"{path or 'config'}: environment variable {name} is not set ({hint})")
        return default

    return _EnvText(_ENV_REF.sub(substitute, text))


# ---------------------------------------------------------------- sections and scalars


def _child(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


class _Missing:
    """The value of a key a section does not have."""


_MISSING = _Missing()


@dataclass(frozen=True, slots=True)
class _Section:
    """A validated mapping at `path`: every key is known; values are read by type."""

    data: Mapping[str, object]
    path: str

    def raw(self, key: str) -> object:
        return self.data.get(key)

    def at(self, key: str) -> str:
        return _child(self.path, key)

    def get(self, key: str, default: T, parse: Parse[T]) -> T:
        """`default` when the key is absent; null is an error unless `parse` accepts it."""
        value = self.data.get(key, _MISSING)
        return default if value is _MISSING else parse(value, self.at(key))

    def optional(self, key: str, default: T | None, parse: Parse[T]) -> T | None:
        """`default` when the key is absent, null, or an environment reference expanding to ""."""
        value = self.data.get(key)
        if value is None or (isinstance(value, _EnvText) and value == ""):
            return default
        return parse(value, self.at(key))


def _section(value: object, path: str, allowed: Iterable[str]) -> _Section:
    """Absent or null means empty; a key outside `allowed` is an error."""
    mapping = {} if value is None else _mapping(value, path)
    for key in mapping:
        if key not in allowed:
            raise ConfigError(_unknown_key(_child(path, key), key, tuple(allowed)))
    return _Section(mapping, path)


def _mapping(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path or 'top level'}: expected a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{_child(path, key)}: keys must be strings, got {_describe(key)}")
    return value


def _unknown_key(path: str, key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]}?" if close else f"expected one of: {', '.join(allowed)}"
    return f"unknown key {path} ({hint})"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return repr(str(value)) if isinstance(value, str) else repr(value)
    return f"a {type(value).__name__}"


def _integer(minimum: int = 1, maximum: int | None = None) -> Parse[int]:
    upper = math.inf if maximum is None else maximum

    def parse(value: object, path: str) -> int:
        number = _from_env(value, int)
        if isinstance(number, bool) or not isinstance(number, int) or number < minimum or number > upper:
            raise ConfigError(f"{path}: expected {_integer_kind(minimum, maximum)}, got {_describe(value)}")
        return number

    return parse


def _integer_kind(minimum: int, maximum: int | None) -> str:
    if maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    return "a positive integer" if minimum == 1 else "a non-negative integer"


def _number(low: float, high: float, *, open_low: bool, open_high: bool) -> Parse[float]:
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def parse(value: object, path: str) -> float:
        number = _from_env(value, float)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or math.isnan(number):
            raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
        below = number <= low if open_low else number < low
        above = number >= high if open_high else number > high
        if below or above:
            raise ConfigError(f"{path}: expected a number in {interval}, got {_describe(value)}")
        return float(number)

    return parse


_FRACTION = _number(0.0, 1.0, open_low=True, open_high=False)  # (0, 1]
_MARGIN = _number(0.0, 1.0, open_low=False, open_high=True)  # [0, 1)
_NON_NEGATIVE = _number(0.0, math.inf, open_low=False, open_high=True)
_SECONDS = _number(0.0, math.inf, open_low=True, open_high=True)


def _from_env(value: object, kind: type[int] | type[float]) -> object:
    if not isinstance(value, _EnvText):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        return value


def _boolean(value: object, path: str) -> bool:
    if isinstance(value, _EnvText) and value.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.strip().lower()]
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or value == "":
        raise ConfigError(f"{path}: expected a non-empty string, got {_describe(value)}")
    return str(value)


def _secret(value: object, path: str) -> str:
    """Like `_text`, but the message names only the type, never the value."""
    if not isinstance(value, str) or value == "":
        shown = "an empty string" if value == "" else _type_of(value)
        raise ConfigError(f"{path}: expected a non-empty string, got {shown}")
    return str(value)


def _type_of(value: object) -> str:
    return "null" if value is None else f"a value of type {type(value).__name__}"


def _choice(allowed: Iterable[str]) -> Parse[str]:
    options = tuple(allowed)

    def parse(value: object, path: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise ConfigError(f"{path}: expected one of {', '.join(options)}, got {_describe(value)}")
        return str(value)

    return parse


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
    return value


# ---------------------------------------------------------------- server, store, models


def _server(value: object, overrides: Overrides) -> ServerSettings:
    sec, base = _section(value, "server", _SERVER_KEYS), ServerSettings()
    return ServerSettings(
        host=_pick(_override(overrides.host, "--host", _text), sec.get("host", base.host, _text)),
        port=_pick(_override(overrides.port, "--port", _PORT), sec.get("port", base.port, _PORT)),
        max_body_bytes=sec.get("max_body_bytes", base.max_body_bytes, _integer()),
        max_header_bytes=sec.get("max_header_bytes", base.max_header_bytes, _integer()),
        default_context_window=sec.get("default_context_window", base.default_context_window, _integer()),
        log_content=sec.get("log_content", base.log_content, _boolean),
        log_timings=sec.get("log_timings", base.log_timings, _boolean),
        session_idle_seconds=sec.get("session_idle_seconds", base.session_idle_seconds, _integer()),
        allow_unauthenticated=overrides.allow_unauthenticated
        or sec.get("allow_unauthenticated", base.allow_unauthenticated, _boolean),
        workers=_pick(
            _override(overrides.workers, "--workers", _integer()), sec.optional("workers", base.workers, _integer())
        ),
    )


_PORT = _integer(1, 65535)


def _override(value: object, flag: str, parse: Parse[T]) -> T | None:
    return None if value is None else parse(value, flag)


def _pick(override: T | None, configured: T) -> T:
    """A command-line flag wins; the config value is validated either way."""
    return configured if override is None else override


def _store(value: object, overrides: Overrides) -> StoreSettings:
    sec, base = _section(value, "store", _STORE_KEYS), StoreSettings()
    return StoreSettings(
        url=_pick(_override(overrides.store, "--store", _store_url), sec.get("url", base.url, _store_url)),
        data_dir=sec.get("data_dir", base.data_dir, lambda v, p: Path(_text(v, p))),
        outage_queue=sec.get("outage_queue", base.outage_queue, _integer()),
        appendfsync=sec.get("appendfsync", base.appendfsync, _choice(APPENDFSYNC)),
        outage_queue_bytes=sec.get("outage_queue_bytes", base.outage_queue_bytes, _integer()),
    )


def _ui(value: object) -> UISettings:
    sec, base = _section(value, "ui", _UI_KEYS), UISettings()
    return UISettings(
        turns=sec.get("turns", base.turns, _integer(0)),
        prompts=sec.get("prompts", base.prompts, _integer(0)),
        sessions=sec.get("sessions", base.sessions, _integer(0)),
    )


def _store_url(value: object, path: str) -> str:
    url = _secret(value, path)  # a Redis URL may carry a password
    if url == "embedded" or urlsplit(url).scheme in _STORE_SCHEMES:
        return url
    raise ConfigError(
        f'{path}: expected "embedded" or a redis://, rediss:// or unix:// URL '
        "(redis+cluster://host:port[,host:port...] for a Redis Cluster)"
    )


def _models(value: object) -> Mapping[str, ModelOverride]:
    data = {} if value is None else _mapping(value, "models")
    return MappingProxyType({name: _model(entry, _child("models", name)) for name, entry in data.items()})


def _model(value: object, path: str) -> ModelOverride:
    sec = _section(value, path, _MODEL_KEYS)
    return ModelOverride(
        context_window=sec.optional("context_window", None, _integer()),
        encoding=sec.optional("encoding", None, _choice(sorted(OFFLINE_ENCODINGS))),
    )


# ---------------------------------------------------------------- upstream


def _env_upstream(env: Mapping[str, str]) -> UpstreamSettings:
    """The upstream before config.yaml: environment fallbacks, then OpenAI (and Anthropic for
    the Messages API)."""
    api_base = env.get("CLAWVM_UPSTREAM_BASE_URL") or DEFAULT_API_BASE
    api_key = env.get("CLAWVM_UPSTREAM_API_KEY") or env.get("OPENAI_API_KEY") or None
    anthropic_base = _http_url(env.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_BASE, "ANTHROPIC_BASE_URL")
    return UpstreamSettings(
        api_base=_http_url(api_base, "CLAWVM_UPSTREAM_BASE_URL"),
        api_key=api_key,
        anthropic_base=anthropic_base,
        anthropic_key=env.get("ANTHROPIC_API_KEY") or None,
    )


def _upstream(value: object, path: str, base: UpstreamSettings, *, tenant: bool = False) -> UpstreamSettings:
    """`base` with each field the section sets replaced (`model_map` is replaced whole). In a
    tenant's section (`tenant`), an `api_key` other than the shared one is that tenant's own."""
    sec = _section(value, path, _UPSTREAM_KEYS)
    api_key = sec.optional("api_key", base.api_key, _secret)
    anthropic_key = sec.optional("anthropic_key", base.anthropic_key, _secret)
    return UpstreamSettings(
        api_base=sec.optional("api_base", base.api_base, _http_url),
        api_key=api_key,
        forward_client_key=sec.get("forward_client_key", base.forward_client_key, _boolean),
        account_routes=sec.get("account_routes", base.account_routes, _boolean),
        tenant_key=tenant and api_key is not None and api_key != base.api_key,
        timeout=sec.get("timeout_seconds", base.timeout, _SECONDS),
        model_map=sec.get("model_map", base.model_map, _model_map),
        retries=sec.get("retries", base.retries, _integer(0, 10)),
        backoff=sec.get("backoff", base.backoff, _NON_NEGATIVE),
        backoff_max=sec.get("backoff_max", base.backoff_max, _NON_NEGATIVE),
        retry_after_max=sec.get("retry_after_max", base.retry_after_max, _NON_NEGATIVE),
        stream_idle_timeout=sec.get("stream_idle_timeout", base.stream_idle_timeout, _SECONDS),
        anthropic_base=sec.optional("anthropic_base", base.anthropic_base, _http_url),
        anthropic_key=anthropic_key,
        anthropic_tenant_key=tenant and anthropic_key is not None and anthropic_key != base.anthropic_key,
    )


def _apply_upstream_override(upstream: UpstreamSettings, overrides: Overrides) -> UpstreamSettings:
    if overrides.upstream is None:
        return upstream
    return replace(upstream, api_base=_http_url(overrides.upstream, "--upstream"))


def _http_url(value: object, path: str) -> str:
    url = _text(value, path)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{path}: expected an http:// or https:// URL, got {_describe(value)}")
    return url.rstrip("/")


def _model_map(value: object, path: str) -> Mapping[str, str]:
    data = {} if value is None else _mapping(value, path)
    return MappingProxyType({name: _text(target, _child(path, name)) for name, target in data.items()})


# ---------------------------------------------------------------- tenants


def is_loopback_host(host: str) -> bool:
    """True only for a bind address no other machine can reach: 127.0.0.0/8, ::1 (also as
    ::ffff:127.x.x.x or in brackets) and the name localhost. Everything else counts as exposed:
    0.0.0.0, ::, "" (all interfaces to uvicorn/asyncio), any other address, and every other host
    name (it is not resolved: what it resolves to may change after start-up)."""
    name = host.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _check_open_exposure(server: ServerSettings) -> None:
    """No tenants on an address others can reach: refused unless the operator allowed it."""
    if server.allow_unauthenticated or is_loopback_host(server.host):
        return
    raise ConfigError(
        f"server.host: {server.host!r} is not a loopback address and no tenants are configured, so anyone who "
        "can reach it could use the upstream key, every relayed /v1 route and every session's audit data. "
        f"Add tenants: a `tenants:` section in config.yaml (each with api_keys), or set {ENV_API_KEYS}=key1,key2 "
        'for a single tenant "default" (clients then send one of those keys as their API key). To serve '
        "without authentication on purpose, set server.allow_unauthenticated: true in config.yaml or pass "
        f"{ALLOW_UNAUTHENTICATED_FLAG}."
    )


def _env_tenant(env: Mapping[str, str], upstream: UpstreamSettings, overrides: Overrides) -> tuple[Tenant, ...]:
    """$CLAWVM_API_KEYS, when config.yaml lists no tenants: the "default" tenant with those keys."""
    raw = env.get(ENV_API_KEYS)
    if raw is None or not raw.strip():
        return ()
    keys = [key.strip() for key in raw.split(",")]
    for index, key in enumerate(keys):
        if not key:
            raise ConfigError(f"{ENV_API_KEYS}: key {index + 1} is empty (expected key1,key2,... without blanks)")
        if any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigError(f"{ENV_API_KEYS}: key {index + 1} contains whitespace or control characters")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{ENV_API_KEYS}: a key is listed twice")
    open_tenant = _open_tenant(upstream, overrides)
    return (replace(open_tenant, api_keys=tuple(keys)),)


def _open_tenant(upstream: UpstreamSettings, overrides: Overrides) -> Tenant:
    budget = Budget(max_prompt_tokens=_override(overrides.budget, "--budget", _integer()))
    return Tenant(OPEN_TENANT, (), TenantPolicy(name=OPEN_TENANT, budget=budget), upstream)


def _tenants(value: object, upstream: UpstreamSettings, overrides: Overrides) -> tuple[Tenant, ...]:
    data = {} if value is None else _mapping(value, "tenants")
    tenants = tuple(_tenant(name, entry, upstream, overrides) for name, entry in data.items())
    _check_unique_keys(tenants)
    return tenants


def _tenant(name: str, value: object, upstream: UpstreamSettings, overrides: Overrides) -> Tenant:
    path = _child("tenants", name)
    if not _TENANT_NAME.fullmatch(name):
        raise ConfigError(f"{path}: a tenant name is 1-64 characters from A-Z a-z 0-9 . _ -")
    sec = _section(value, path, _TENANT_KEYS)
    policy = TenantPolicy(
        name=name,
        budget=_budget(sec.raw("budget"), sec.at("budget"), overrides),
        types=_page_types(sec.raw("pages"), sec.at("pages")),
        weights=_weights(sec.raw("weights"), sec.at("weights")),
        rules=_rules(sec.raw("rules"), sec.at("rules")),
        cache=_cache_policy(sec.raw("policy"), sec.at("policy")),
    )
    keys = _api_keys(sec.raw("api_keys"), sec.at("api_keys"))
    return Tenant(name, keys, policy, _upstream(sec.raw("upstream"), sec.at("upstream"), upstream, tenant=True))


def _limited(tenants: tuple[Tenant, ...], top: _Section) -> tuple[Tenant, ...]:
    """Each tenant with its limits: the top-level `limits` section (the default of every tenant,
    the open one included), overridden field by field by `tenants.<name>.limits`."""
    default = _limits(top.raw("limits"), top.at("limits"), TenantLimits())
    configured = top.raw("tenants")
    entries = configured if isinstance(configured, dict) else {}
    limited = []
    for tenant in tenants:
        entry = entries.get(tenant.name)
        own = entry.get("limits") if isinstance(entry, dict) else None
        path = _child(_child("tenants", tenant.name), "limits")
        limited.append(replace(tenant, limits=_limits(own, path, default)))
    return tuple(limited)


def _limits(value: object, path: str, base: TenantLimits) -> TenantLimits:
    sec = _section(value, path, _LIMIT_KEYS)
    return TenantLimits(
        max_concurrent_requests=sec.get("max_concurrent_requests", base.max_concurrent_requests, _integer(0)),
    )


def _api_keys(value: object, path: str) -> tuple[str, ...]:
    items = [] if value is None else _list(value, path)
    if not items:
        raise ConfigError(f"{path}: a tenant needs at least one API key")
    return tuple(_secret(key, f"{path}[{i}]") for i, key in enumerate(items))


def _check_unique_keys(tenants: tuple[Tenant, ...]) -> None:
    """No API key may be listed twice; the message gives both positions, never the key."""
    owners: dict[str, str] = {}
    for tenant in tenants:
        for index, key in enumerate(tenant.api_keys):
            where = f"tenants.{tenant.name}.api_keys[{index}]"
            if key in owners:
                raise ConfigError(f"{where}: duplicate API key (also at {owners[key]})")
            owners[key] = where


def _budget(value: object, path: str, overrides: Overrides) -> Budget:
    sec, base = _section(value, path, _BUDGET_KEYS), Budget()
    override = _override(overrides.budget, "--budget", _integer())
    return Budget(
        max_prompt_tokens=sec.optional("max_prompt_tokens", override, _integer()),
        window_fraction=sec.optional("window_fraction", base.window_fraction, _FRACTION),
        output_reserve=sec.get("output_reserve", base.output_reserve, _integer(0)),
        safety_margin=sec.get("safety_margin", base.safety_margin, _MARGIN),
    )


def _page_types(value: object, path: str) -> Mapping[PageType, TypePolicy]:
    sec = _section(value, path, _PAGE_TYPES)
    if not sec.data:
        return DEFAULT_TYPES
    types = dict(DEFAULT_TYPES)
    for name, entry in sec.data.items():
        types[PageType(name)] = _type_policy(entry, sec.at(name), DEFAULT_TYPES[PageType(name)])
    return MappingProxyType(types)


def _type_policy(value: object, path: str, base: TypePolicy) -> TypePolicy:
    sec = _section(value, path, _PAGE_KEYS)
    return TypePolicy(
        floor=sec.get("floor", base.floor, lambda v, p: Fidelity.parse(_choice(_FLOORS)(v, p))),
        pin=sec.get("pin", base.pin, lambda v, p: Pin(_choice(_PINS)(v, p))),
        base_utility=sec.get("base_utility", base.base_utility, _NON_NEGATIVE),
        scope=sec.get("scope", base.scope, lambda v, p: Scope(_choice(_SCOPES)(v, p))),
    )


def _weights(value: object, path: str) -> Weights:
    sec, base = _section(value, path, _WEIGHT_KEYS), Weights()
    return Weights(
        pin_hard=sec.get("pin_hard", base.pin_hard, _NON_NEGATIVE),
        pin_soft=sec.get("pin_soft", base.pin_soft, _NON_NEGATIVE),
        recency=sec.get("recency", base.recency, _NON_NEGATIVE),
        recency_decay=sec.get("recency_decay", base.recency_decay, _FRACTION),
        recompute=sec.get("recompute", base.recompute, _NON_NEGATIVE),
    )


def _cache_policy(value: object, path: str) -> CachePolicy:
    """`policy.cache` (stable or tight) and `policy.low_water` (a fraction of the budget, (0, 1])."""
    sec, base = _section(value, path, _POLICY_KEYS), CachePolicy()
    return CachePolicy(
        mode=sec.get("cache", base.mode, lambda v, p: CacheMode(_choice(_CACHE_MODES)(v, p))),
        low_water=sec.get("low_water", base.low_water, _FRACTION),
    )


def _rules(value: object, path: str) -> tuple[ClassifierRule, ...]:
    items = [] if value is None else _list(value, path)
    return tuple(_rule(entry, f"{path}[{i}]") for i, entry in enumerate(items))


def _rule(value: object, path: str) -> ClassifierRule:
    sec = _section(value, path, _RULE_KEYS)
    for key in ("pattern", "type"):
        if key not in sec.data:
            raise ConfigError(f"{sec.at(key)}: required")
    pattern = _pattern(sec.raw("pattern"), sec.at("pattern"))
    page_type = PageType(_choice(_PAGE_TYPES)(sec.raw("type"), sec.at("type")))
    if "roles" not in sec.data:
        return ClassifierRule(pattern, page_type)
    return ClassifierRule(pattern, page_type, _roles(sec.raw("roles"), sec.at("roles")))


def _pattern(value: object, path: str) -> str:
    source = _text(value, path)
    try:
        re.compile(source, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{path}: invalid regular expression: {exc}") from exc
    return source


def _roles(value: object, path: str) -> frozenset[str]:
    items = _list(value, path)
    if not items:
        raise ConfigError(f"{path}: expected at least one role")
    return frozenset(_choice(sorted(ROLES))(role, f"{path}[{i}]") for i, role in enumerate(items))
