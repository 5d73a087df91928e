"""The user-intent cue table, on many phrasings, negations, false friends, questions, quoted
text and code, and on the labelled set of user sentences (bench/data/intent_labels.tsv)."""

from __future__ import annotations

import pytest

from bench.intent import LABELS, load_labels, score
from policies import intent
from policies.classify import LONG_MESSAGE_INTENTS, MAX_INTENT_CHARS, MAX_TYPED_CHARS, extract_facts
from policies.intent import identity_key, intent_kind
from policies.pages import PageType
from policies.transcript import Message

N = PageType.INTENT

# Floors set from measurement (all: precision 0.969, recall 0.975; held-out: 0.905, 0.950),
# a little below it so that a regression shows and a harmless tweak does not.
PRECISION_FLOOR = 0.95
RECALL_FLOOR = 0.95
HELDOUT_PRECISION_FLOOR = 0.85
HELDOUT_RECALL_FLOOR = 0.90


def user_facts(text: str) -> list[tuple[PageType, str]]:
    return [(f.type, f.text) for f in extract_facts(Message(role="user", text=text))]


ISSUE_EXAMPLES = (
    "go on with the list, except the migration — I don't want that.",
    "before anything else I'd like the docs brought up to date.",
    "don't touch the tests folder.",
    "my name is Pavol Vaskovic and my e-mail is pali@pali.sk.",
    "the blue one, size M, no express shipping.",
)


@pytest.mark.parametrize("text", ISSUE_EXAMPLES)
def test_the_issues_examples_are_kept_whole(text: str) -> None:
    facts = user_facts(text)
    assert [fact for _, fact in facts] == [text]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("I don't want any new dependencies in this project.", "prohibition"),
        ("We won't need travel insurance for this trip.", "prohibition"),
        ("No emojis in the commit messages, please.", "prohibition"),
        ("Refactor the parser without changing its public interface.", "prohibition"),
        ("Leave the README alone for this task.", "prohibition"),
        ("Update all the packages except for numpy.", "exception"),
        ("Cancel every order other than the one with the laptop.", "exception"),
        ("Delete the old branches unless they have open pull requests.", "exception"),
        ("Before doing anything, make a backup of the database.", "ordering"),
        ("Start with the authentication module and then move to the billing code.", "ordering"),
        ("Only after the tests pass should you open the pull request.", "ordering"),
        ("Next, write the migration for the new column.", "ordering"),
        ("My user id is mia_garcia_9273.", "identity"),
        ("Amelia Silva, 19103.", "identity"),
        ("My phone number is +1 415 555 0134.", "identity"),
        ("The booking reference is QX7T2P.", "identity"),
        ("I'd like the answers in Spanish from now on.", "wish"),
        ("I need the totals broken down per month.", "wish"),
        ("Cancel #W4836353 and #W7342738.", "wish"),
        ("Keep the boots.", "wish"),
        ("Yes, please proceed with adding 3 checked bags.", "wish"),
        ("My primary goal is to adjust my flight from ATL to a nonstop to LAS.", "wish"),
        ("Could you please add 3 checked bags to my reservation?", "wish"),
        ("Can we move the constants into a separate file?", "wish"),
        ("I have converted it from binary, use head to explore the format a bit.", "wish"),
        ("The trip type is one-way.", "specifics"),
        ("I'll use the Visa ending in 6437 for the remaining amount.", "specifics"),
        ("Which restaurants within 1 block of Washington Square Park have vegan mains under $15?", "specifics"),
        ("Pleare review the day-002 log and critically analyze where the problems originated.", "wish"),
        ("plz run the linter before committing.", "ordering"),
        ("I would expect the property to decode float pixel data without that element.", "wish"),
        ("I'd first like to discuss the options -- would that change the log file?", "wish"),
        ("Hi, I just placed an order, but there's an issue with my payment.", "specifics"),
        ("No, I actually don't have any books that have ZSTATE 5.", "specifics"),
        ("There's no BookMinder Team.", "specifics"),
        ("Snowcrash is a Book Sample, as is Tiny Experiments", "specifics"),
    ],
)
def test_phrasings_of_each_kind(text: str, kind: str) -> None:
    assert intent_kind(text) == kind
    assert user_facts(text)  # kept: as an intent, or as a rule or preference the older cues find


@pytest.mark.parametrize(
    "text",
    [
        "I don't remember the exact order numbers.",
        "Hmm, I don’t remember the exact order numbers.",
        "I don't know which reservation it was.",
        "I'm not sure what the error means.",
        "However, I’m not sure about my reservation ID at the moment.",
        "I'd like to know why the build is failing.",
        "I want to know what the total refund is.",
        "I wanted to say thanks.",
        "No, that's all.",
        "Let's see what happens.",
        "Let's do this.",
        "Yes, do it quickly, please.",
        "Order #W4836353 was placed on May 2.",
        "My flight was delayed by two hours.",
        "I'm happy with the result.",
        "I never said that.",
        "The budget was discussed on the trip.",
    ],
)
def test_false_friends_and_self_descriptions_are_not_intents(text: str) -> None:
    assert intent_kind(text) is None
    assert N not in {t for t, _ in user_facts(text)}


@pytest.mark.parametrize(
    "text",
    [
        "What's the purpose of the conftest.py?",
        "Should we use Postgres or MySQL?",
        "Can you help me with that?",
        "Could you tell me the baggage allowance?",
        "Can you check which items I ordered?",
        "Would you recommend upgrading?",
        "How much money will this save me in total?",
    ],
)
def test_questions_asking_for_advice_or_information_are_not_intents(text: str) -> None:
    assert intent_kind(text) is None
    assert user_facts(text) == []


@pytest.mark.parametrize(
    "text",
    [
        '"Never trust user input, and cancel every order" is a good motto.',
        "> please delete all the branches before anything else",
        "Error: connection refused, please retry the request later",
        "✕ [API Error: Please ensure that the number of function response parts is equal]",
        '{"action": "delete", "note": "do not keep the backups"}',
        "```\n# don't touch the tests folder\nrm -rf tests\n```",
        "# Before anything else, read this heading",
    ],
)
def test_quoted_text_pasted_output_and_code_are_not_intents(text: str) -> None:
    assert user_facts(text) == []


def test_a_quoted_span_inside_a_sentence_does_not_make_it_an_intent() -> None:
    assert user_facts('He wrote "please cancel my order" on the ticket.') == []
    assert intent_kind('Please reply to the "urgent" ticket first.') == "wish"


def test_a_bare_email_address_is_kept_though_it_is_one_word() -> None:
    assert user_facts("silva7872@example.com") == [(N, "silva7872@example.com")]
    assert user_facts("ok") == [] and user_facts("try again") == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("My email is daikisanchez1479@example.com.", "email"),
        ("Try amelia.silva7872@example.com instead.", "email"),
        ("My name is Ethan Garcia, and my zip code is 80280.", "name"),
        ("Daiki Sanchez, 46236.", "name"),
        ("My GitHub handle is @pvaskovic.", "handle"),
        ("My user ID is omar_rossi_1241, but I don't have the reservation ID with me.", "user_id"),
        ("My phone number is +1 415 555 0134.", "phone"),
        ("My address is 12 Elm Street, Springfield, IL 62704.", "address"),
        ("Cancel #W4836353 and #W7342738.", None),
    ],
)
def test_identity_keys(text: str, key: str | None) -> None:
    assert identity_key(text) == key


def test_an_intent_is_never_cut_mid_sentence() -> None:
    long_wish = "Please keep " + ", ".join(f"module{i}.py" for i in range(60)) + " exactly as they are."
    assert 400 < len(long_wish) <= MAX_INTENT_CHARS
    assert user_facts(long_wish) == [(N, long_wish)]
    pasted = "Please keep " + " ".join(f"w{i}" for i in range(400)) + "."
    assert len(pasted) > MAX_INTENT_CHARS and user_facts(pasted) == []  # a wall of text is not a sentence


@pytest.mark.parametrize("role", ["tool", "assistant", "system", "developer"])
def test_intents_come_from_user_text_only(role: str) -> None:
    for text in ISSUE_EXAMPLES:
        assert N not in {f.type for f in extract_facts(Message(role=role, text=text))}


# ---------------------------------------------------------------- the labelled set


def test_the_labelled_set_is_large_balanced_and_well_formed() -> None:
    rows = load_labels()
    assert len(rows) >= 500
    positives = sum(row.intent for row in rows)
    assert 0.4 <= positives / len(rows) <= 0.6
    assert sum(row.source.startswith("trace:") for row in rows) >= 200
    assert {row.kind for row in rows if row.intent} == {
        "wish",
        "prohibition",
        "exception",
        "ordering",
        "identity",
        "specifics",
    }
    assert all(row.kind == "-" for row in rows if not row.intent)
    assert len({row.sentence for row in rows}) == len(rows), f"duplicate sentences in {LABELS.name}"


def test_precision_and_recall_on_the_labelled_set_stay_above_their_floors() -> None:
    rows = load_labels()
    overall = score(rows)
    assert overall.precision >= PRECISION_FLOOR, overall.false_alarms
    assert overall.recall >= RECALL_FLOOR, overall.misses
    heldout = score(rows, "heldout")
    assert heldout.sentences >= 80
    assert heldout.precision >= HELDOUT_PRECISION_FLOOR, heldout.false_alarms
    assert heldout.recall >= HELDOUT_RECALL_FLOOR, heldout.misses


def test_a_long_template_yields_the_persons_own_words_as_intents_and_no_more_than_three() -> None:
    issue = "I would expect the reader to accept float pixel data. " + "Run the tests after every edit. " * 50
    speaking = " ".join(f"I need change number {n} in the build file." for n in range(5))
    template = issue + speaking + " Some pasted log line." * 200
    assert len(template) > MAX_TYPED_CHARS
    intents = [text for kind, text in user_facts(template) if kind is N]
    assert intents[0] == "I would expect the reader to accept float pixel data."
    assert len(intents) == LONG_MESSAGE_INTENTS
    assert "Run the tests after every edit." not in intents  # an order in a template is not the person's


@pytest.mark.parametrize(
    "text",
    [
        "No, thanks.",
        "No, I don't know.",
        "No, that is all.",
        "It is a Bug.",
        "Thanks -- what does this flag do?",
        "I'm not sure -- what does this flag do?",
    ],
)
def test_short_answers_pronouns_and_plain_questions_are_not_corrections(text: str) -> None:
    assert intent_kind(text) is None


def test_a_user_message_too_long_to_be_typed_yields_rules_but_no_intents() -> None:
    template = "You must keep every answer short. Cancel #W4836353 and #W7342738. " + "Some pasted log line. " * 200
    assert len(template) > MAX_TYPED_CHARS
    assert [t for t, _ in user_facts(template)] == [PageType.CONSTRAINT]
    assert (N, "Cancel #W4836353 and #W7342738.") in user_facts(template[:MAX_TYPED_CHARS])


def test_warm_builds_the_typo_table_the_classifier_reads() -> None:
    intent._mistyped_verbs.cache_clear()
    intent.warm()
    assert intent._mistyped_verbs.cache_info().currsize == 1
    table = intent._mistyped_verbs(intent.IMPERATIVE_VERBS)
    assert intent._mistyped_verbs.cache_info().hits == 1 and table  # the classifier's call is answered from it
