"""What a person asked for: the cue table that finds intent in user sentences.

A user sentence states intent when it says what the agent should do or not do, or fixes a
detail the rest of the session depends on. Its kind is the first that applies:

- identity: a fact about the person: a name, an e-mail address, a user, account, order or
  reservation id, an address, a phone number, a zip code ("My user ID is omar_rossi_1241",
  "Amelia Silva, 19103.", a bare e-mail address);
- prohibition: "don't touch the tests folder", "I don't want that", "no express shipping",
  "without changing the flights";
- exception: "except the migration", "other than", "apart from", "leave X alone";
- ordering: "before anything else", "first ...", "start with ...", "only after ...";
- wish: "I'd like ...", "I want / need / wish ...", "please ...", "let's ...", "my goal is ...",
  an imperative addressed to the agent ("Cancel #W4836353", "Keep the boots"), a polite
  request put as a question ("Could you please add 3 checked bags?", "Can we make it simpler?");
- specifics: the details of the request ("The trip type is one-way.", "size M",
  "I'll use the Visa ending in 6437").

The cues are data: `CUES` (kind, pattern) for statements, `REQUESTS` for questions that are
requests, `IMPERATIVE_VERBS` for sentences that open with an order, `IDENTITY_KEYS` for the
identity slot (`identity_key`). Before matching, `FALSE_FRIENDS` are blanked out: first-person
phrases that look like a wish or a prohibition but describe the speaker's state of mind or ask
for an explanation ("I don't remember", "I don't know", "I'm not sure", "I'd like to know why").
A question is intent only when it is a request (`REQUESTS`); asking for advice or information
("should we ...?", "what is ...?") is not. A wish or an order needs at least
`MIN_CONTENT_WORDS` words beyond the function words ("Let's do this." says nothing that a
later turn needs). Quoted text (a sentence inside quotes, a `>` line) is someone else's words.

Only `policies.classify` calls this, and only for user text: whatever a tool result or an
assistant message says, it never becomes intent.
"""

from __future__ import annotations

import re
from functools import cache

MIN_CONTENT_WORDS = 2
# "please" as people type it: the word, its abbreviations and its common typos ("Pleare review ...").
PLEASE = r"(?:please|pls|plz|pleas|plese|pleae|pleare|pleaes|plaese|plase|pleasse|pleasee|pelase|pleaze)"
_A = "['\u2019]"  # an apostrophe, straight or curly

# Blanked before matching: the speaker describing themselves, or asking to be told something.
FALSE_FRIENDS: tuple[str, ...] = (
    rf"\bI\s+(?:just\s+|really\s+|still\s+|honestly\s+|actually\s+)?(?:do\s+not|don{_A}?t|can{_A}?t|cannot|didn{_A}?t)"
    r"\s+(?:remember|recall|know|think|understand|get\s+it|see\s+why|mind|care|believe|have\s+(?:it|them|that|the|my|any)"
    r"|quite\s+get|recognize|recognise)\b",
    rf"\bI{_A}?m\s+not\s+sure\b|\bI\s+am\s+not\s+sure\b|\bnot\s+sure\s+(?:if|whether|about|which|what)\b",
    rf"\bI(?:{_A}d|\s+would)\s+(?:like|love|want)\s+to\s+(?:know|understand|ask|hear|learn|see\s+(?:why|how|what|if))\b",
    r"\bI\s+(?:want|need|wish)\s+to\s+(?:know|understand|ask)\b",
    rf"\bno\s+(?:problem|worries|thanks|idea|doubt|wonder|rush|matter)\b|\bno,\s+that{_A}?s\s+(?:all|it)\b",
    r"\bI\s+(?:wonder|guess|suppose|suspect|feel\s+like|was\s+wondering)\b",
    rf"\blet{_A}?s\s+(?:see|hope|wait\s+and\s+see)\b|\bI\s+wanted\s+to\s+(?:say|thank|ask|mention|let\s+you\s+know)\b",
    r"\bnot\s+(?:really|sure|bad|much|quite|exactly)\b",
    r"\bwithout\s+(?:a\s+doubt|question|success)\b",
)

# (kind, pattern) for statements, tried in order; identity first, then the rest.
CUES: tuple[tuple[str, str], ...] = (
    # identity
    (
        "identity",
        r"\bmy\s+(?:full\s+|first\s+|last\s+|new\s+|current\s+|work\s+|home\s+)?(?:name|e-?mail(?:\s+address)?"
        r"|user\s*(?:id|name)|username|account(?:\s+(?:id|number|name))?|customer\s+(?:id|number)"
        r"|member(?:ship)?\s+(?:id|number)|order\s+(?:id|number)|reservation(?:\s+(?:id|number|code))?"
        r"|booking\s+(?:reference|id|number)|confirmation\s+(?:code|number)|phone(?:\s+number)?|mobile(?:\s+number)?"
        r"|cell(?:\s+number)?|(?:shipping\s+|billing\s+|street\s+)?address|zip(?:\s*code)?|postcode|postal\s+code"
        r"|date\s+of\s+birth|birthday|dob|passport(?:\s+number)?|employee\s+(?:id|number)|handle|github)\b",
    ),
    (
        "identity",
        r"\b(?:the\s+|our\s+)?(?:user|reservation|order|booking|account|customer|confirmation|ticket|member)\s*"
        r"(?:id|number|code|no\.?|#|reference|ref)\s*(?:is|was|:|=)\s*\S",
    ),
    ("identity", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    ("identity", r"(?-i:^[A-Z][a-z]+(?:\s+[A-Z][a-z'-]+)+),?\s+\d{5}(?:-\d{4})?\.?$"),
    ("identity", rf"(?-i:\b(?:I{_A}m|I\s+am|[Tt]his\s+is|[Ii]t{_A}s)\s+[A-Z][a-z]+\s+[A-Z][a-z]+\b)"),
    ("identity", r"\bcall\s+me\s+at\b|\breach\s+me\s+at\b|\bI\s+live\s+(?:at|in|on)\b"),
    # prohibition
    (
        "prohibition",
        rf"\b(?:I|we)\s+(?:really\s+|just\s+|also\s+|still\s+)?(?:do\s+not|don{_A}?t|didn{_A}?t|won{_A}?t|will\s+not)"
        r"\s+(?:want|need|like|wish|allow|accept)\b",
        # "I don't want that", "we won't need travel insurance"
    ),
    (
        "prohibition",
        rf"(?:^|[,;:(]\s*|--\s*|\u2014\s*|\b(?:please|and|but|so|just|then|also|now|you|we)\s+)"
        rf"(?:do\s+not|don{_A}?t|never|avoid|stop|quit)\s+\w+",
    ),
    ("prohibition", r"(?:^|[,;:(]\s*|\band\s+|\bbut\s+|\bthen\s+)no\s+(?!one\b|longer\b|matter\b)[a-z]\w+"),
    (
        "prohibition",
        r"\bwithout\s+(?:changing|touching|modifying|breaking|asking|removing|deleting|rewriting|renaming|moving"
        r"|affecting|running|adding\s+(?:any|new)|any)\b",
    ),
    ("prohibition", r"(?:,|;|\bbut)\s+not\s+\w+|\bnot\s+(?:yet|now|for\s+now|until)\b|\bnothing\s+else\b"),
    ("prohibition", r"\b(?:leave|keep)\s+(?:\w+\s+){0,3}(?:alone|untouched|as\s+(?:is|it\s+is)|out\s+of)\b"),
    # exception
    ("exception", r"\b(?:except(?:\s+for)?|excepting|excluding|apart\s+from|aside\s+from|other\s+than|save\s+for)\b"),
    ("exception", r"\bbut\s+(?:not|keep|leave|skip|only)\b|\bunless\b|^instead\s+of\b"),
    # ordering
    (
        "ordering",
        r"\bbefore\s+(?:anything|everything|doing|you|we|starting|committing|pushing|making|moving|going|any)\b"
        r"|\b(?:first\s+of\s+all|to\s+begin\s+with|start\s+(?:with|by)|begin\s+(?:with|by)|after\s+that"
        r"|only\s+(?:after|once|when)|once\s+(?:that|this|you|we|it)|in\s+that\s+order|one\s+at\s+a\s+time"
        r"|step\s+by\s+step|then\s+(?:go|move|do|start|run|commit|push|continue))\b",
    ),
    ("ordering", r"^(?:first|firstly|next|then|finally|afterwards|lastly|after\s+that),?\s+\w+"),
    # wish
    (
        "wish",
        rf"\bI(?:{_A}d|\s+would)\s+(?:really\s+|also\s+|rather\s+|first\s+)?(?:like|love|want|prefer|appreciate)\b"
        rf"|\b(?:I|we)\s+(?:really\s+|just\s+|also\s+|still\s+|only\s+|actually\s+)?(?:want|need|wish|expect|require)s?\b"
        rf"|\b(?:I|we)(?:{_A}?m|{_A}?re|\s+am|\s+are|\s+was|\s+were)\s+(?:looking|hoping|trying|planning|aiming|going)\s+to\b"
        rf"|\b(?:I|we){_A}?(?:m|re|\s+am|\s+are)\s+(?:open\s+to|fine\s+with|ok\s+with|okay\s+with|happy\s+to)\b"
        rf"|\b(?:I|we)(?:{_A}?m|{_A}?re|\s+am|\s+are|\s+was|\s+were)\s+looking\s+for\b"
        r"|\b(?:we|I)\s+(?:might|may|could)\s+want\s+to\b|\bI\s+(?:told|asked)\s+you\s+to\b"
        r"|\b(?:I|we)\s+(?:plan|intend|wanted|needed|meant|hoped)\s+to\b"
        rf"|\bI(?:{_A}d|\s+would)\s+(?:need|prefer|expect)\b|\b(?:I|we)(?:{_A}?m|{_A}?re|\s+am|\s+are)\s+(?:thinking\s+(?:of|about)"
        r"|considering)\b|\byou\s+(?:can|could|may)\s+(?:use|try|run|skip|ignore|just|also|now)\b"
        r"|\b(?:one|small|tiny|incremental)\s+(?:small\s+)?steps?\b"
        rf"|\b{PLEASE}\b|\bkindly\b"
        rf"|\blet(?:{_A}?s|{_A}t)\s+\w+|\blet\s+us\s+\w+|\blet\s+me\s+(?:approve|review|decide|confirm)\b"
        r"|\b(?:go\s+ahead|proceed|go\s+on|continue|carry\s+on|stick)\s+with\b"
        r"|\b(?:my|our|the)\s+(?:\w+\s+)?(?:goal|aim|priority|objective|intention|request|wish|plan)\s+(?:is|was)\b"
        r"|\byour\s+(?:\w+\s+)?(?:task|job|goal|mission|role)\s+is\b"
        r"|\bwe\s+(?:always\s+)?(?:practice|practise|follow|work\s+with|stick\s+to)\b"
        r"|\b(?:remind|reminding)\s+you\b|\bremember\s+(?:to|that|<)"
        rf"|\bwe(?:{_A}ll|{_A}|\s+will|\s+shall)\s+(?!see\b|be\b|find\s+out\b|figure\b|get\s+there\b)[a-z]+",
    ),
    # specifics
    (
        "specifics",
        r"^(?:the|my|our)\s+(?:\w+\s+)?(?:trip(?:\s+type)?|origin|destination|departure|return|date|dates|budget|size|colou?r"
        r"|quantity|deadline|cabin|class|seat|payment(?:\s+method)?|delivery|shipping|total|limit|target|version"
        r"|branch|language|format|model|style|theme|plan|flight|item|product)\b[^?]*?\b(?:is|are|should\s+be|will\s+be"
        r"|must\s+be|has\s+to\s+be)\b",
    ),
    (
        "specifics",
        r"\b(?:size|colou?r|qty|quantity|budget)\s*[:=]?\s*(?!(?:of|and|is|the|was|were|has|had|will|seems|looks|went)\b)[\w$€£]{1,12}\b",
    ),
    (
        "specifics",
        rf"\bI(?:{_A}ll|\s+will)\s+(?:use|pay|take|go\s+with|choose|pick|book|keep|return|need|want|have)\b"
        r"|\b(?:the\s+)?(?:\w+\s+)?one,\s|\bthe\s+(?:\w+\s+)?one\s+(?:with|in|from|for|that)\b",
    ),
    (
        "specifics",
        r"\b(?:one-way|round[- ]trip|nonstop|non-stop|direct\s+flight|economy|business\s+class|first\s+class"
        r"|gift\s+card|credit\s+card|paypal|visa|mastercard|express\s+shipping|travel\s+insurance|checked\s+bags?)\b",
    ),
    # specifics: the problem the person reports ("there's an issue with my payment")
    (
        "specifics",
        rf"\b(?:there{_A}?s|there\s+(?:is|are|was|were)|I\s+(?:have|had|got)|I{_A}ve\s+got|I(?:{_A}m|\s+am)\s+having)"
        r"\s+(?:an?\s+|some\s+)?(?:issue|problem|trouble|error|bug|mistake)s?\s+(?:with|in|on)\s+(?:my|our|the|this|that)\b",
    ),
    # specifics: a correction of what the agent assumed ("No, I don't have any books in state 5",
    # "There's no BookMinder Team", "Snowcrash is a Book Sample")
    ("specifics", r"^(?:no|nope)[,.!]\s+\S"),
    ("specifics", rf"^there(?:{_A}s|\s+is|\s+are|\s+was|\s+were)\s+no\s+\w+"),
    (
        "specifics",
        r"(?-i:^(?!(?:It|This|That|There|These|Those|He|She|They|We|You|What|Which|Who|Here|The|A|An)\b)"
        r"[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*\s+(?:is|are)\s+(?:a|an|not\s+an?)\s+[A-Z][a-z]\w*)",
    ),
)

# Questions that are requests: "could you (please) add ...", "can we make ...", "would you mind ...".
REQUESTS: tuple[str, ...] = (
    r"^(?:\w+[,!]?\s+){0,2}(?:could|can|would|will)\s+(?:you|we|I|u)\s+(?:please\s+|kindly\s+|just\s+|also\s+"
    r"|somehow\s+|now\s+)*(?!help\b|assist\b|tell\b|explain\b|clarify\b|let\s+me\s+know\b|check\s+(?:which|what"
    r"|if|whether|how)\b|see\b|describe\b|confirm\s+(?:which|what|if)\b|give\s+me\s+(?:a|an|the)\s+(?:summary|overview)"
    r"|say\b|show\s+me\s+(?:what|how|which)\b|do\s+that\b|do\s+it\b|be\b|recommend\b|suggest\b|think\b|know\b)"
    r"[a-z]+\b",
    rf"\bwould\s+you\s+mind\b|\bhow\s+about\s+(?:(?:we|you)\s+\w+|\w+ing)\b|\bwhy\s+don{_A}?t\s+(?:you|we)\b",
)

# A sentence that opens (after a greeting or a discourse word) with one of these verbs is an order.
IMPERATIVE_VERBS: frozenset[str] = frozenset(
    (
        "add append apply approve ask book bring build bump call cancel change charge check clean cleanup clear close"
        " commit compare compile configure confirm continue convert copy correct create cut debug decline delete"
        " deploy describe disable do document double-check downgrade download drop edit email enable ensure exchange"
        " execute exclude expand explain explore export extract fetch file fill find finish fix focus follow format"
        " generate get give go grep hide hold ignore implement import include inspect install investigate keep"
        " leave limit list load lock look mail make mark merge migrate modify monitor move note notify open"
        " pause pay pick pin place plan post prepare print prioritize proceed profile publish pull push put"
        " re-run read rebase rebuild recall reconvene redo refactor refund reinstall reject release reload remind"
        " remove rename reorder repeat rephrase replace reply report request rerun reschedule reset resolve"
        " restart restore resume retry return revert review revise rewrite rollback run save schedule search select"
        " send separate set ship show shorten simplify skip sort split squash start stash stay stick stop"
        " store submit summarize summarise swap switch sync tag take teach test think tidy transfer translate trim"
        " try turn undo uninstall unpin update upgrade upload use validate verify wait wrap write"
    ).split()
)

# Words that may stand before the verb of an order: greetings, answers and discourse words.
_LEAD = re.compile(
    r"^(?:(?:ok(?:ay)?|yes|yeah|yep|sure|great|good|fine|thanks|thank\s+you|hi|hello|hey|alright|right|no|nope"
    rf"|so|and|but|also|then|now|first|firstly|next|finally|{PLEASE}|just|actually|instead|otherwise|meanwhile"
    r"|in\s+the\s+future|for\s+now|after\s+that|from\s+now\s+on|in\s+that\s+case|if\s+so|perfect|excellent"
    r"|lgtm|cool|ah|oh|hmm|well|w8|wait)\b[,.!:;]?\s+)+",
    re.IGNORECASE,
)
# An order typed in haste: the verb one letter off ("Tech me ...", "Reviw the ..."), before its object.
TYPO_VERB_LENGTH = 5  # verbs at least this long are recognised with one letter wrong, missing or extra
_OBJECT = re.compile(
    r"^(?:me|us|the|it|this|that|these|those|my|our|your|a|an|all|every|each|them|him|her)$", re.IGNORECASE
)
_CLAUSE = re.compile(r"[,;:]\s+|\s+--?\s+|\s*\u2014\s*")
# Where a statement ends and a question starts in one sentence ("I'd first like to discuss it -- would ...?").
_ASIDE = re.compile(r"\s*;\s+|\s+--?\s+|\s*\u2014\s*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*")
# Someone else's words: a quoted sentence, a `>` line, pasted error output or JSON.
_QUOTED = re.compile(
    r"^(?:>|[\"\u201c\u2018]|'.*'\W*$|[\u2715\u2717\u2716\[{]|(?:error|traceback|exception)\b)",
    re.IGNORECASE,
)
_SPAN = re.compile(r"\"[^\"]{2,}\"|\u201c[^\u201d]{2,}\u201d")
# A question that is the task itself: long, with figures, dates or qualifiers ("... under $15?").
DETAILED_QUESTION_WORDS = 6
_DETAIL = re.compile(r"\d|[$€£%(]")
FUNCTION_WORDS: frozenset[str] = frozenset(
    (
        "a an the this that these those it its it's this's i me my we us our you your he she they them their"
        " is are was were be been being am do does did doing have has had having will would shall should"
        " can could may might must to of in on at by for with from up down out off over into onto about as"
        " and or but so if then than too very just also still only even now here there again please let's lets"
        " let go going get got ok okay yes no not sure thanks thank hi hello hey well oh ah what which who how"
        " why when where all any some more most other such same one ones like want need wish would'd i'd i'll"
        " i'm we're you're don't won't can't isn't quickly really"
    ).split()
)

IDENTITY_KEYS: tuple[tuple[str, str], ...] = (
    ("email", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\be-?mail\b"),
    ("phone", r"\b(?:phone|mobile|cell)\b|\bcall\s+me\s+at\b|\breach\s+me\s+at\b"),
    (
        "user_id",
        r"\buser\s*(?:id|name)\b|\busername\b|\bcustomer\s+(?:id|number)\b|\bmember(?:ship)?\s+(?:id|number)\b",
    ),
    ("account", r"\baccount\b"),
    ("order", r"\border\s+(?:id|number|no\.?|#)"),
    ("reservation", r"\b(?:reservation|booking|confirmation)\b"),
    ("address", r"\baddress\b|\bI\s+live\s+(?:at|in|on)\b"),
    ("zip", r"\bzip(?:\s*code)?\b|\bpost(?:al\s+)?code\b|,?\s\d{5}(?:-\d{4})?\.?$"),
    ("birth", r"\bdate\s+of\s+birth\b|\bbirthday\b|\bdob\b"),
    ("passport", r"\bpassport\b"),
    ("handle", r"\bhandle\b|\bgithub\b"),
    (
        "name",
        r"\bname\b|(?-i:\b(?:I['\u2019]m|I\s+am|[Tt]his\s+is)\s+[A-Z][a-z]+)|(?-i:^[A-Z][a-z]+\s+[A-Z][a-z]+,?\s+\d)",
    ),
)

_FALSE = re.compile("|".join(f"(?:{p})" for p in FALSE_FRIENDS), re.IGNORECASE)
_CUES = tuple((kind, re.compile(pattern, re.IGNORECASE)) for kind, pattern in CUES)
_REQUESTS = re.compile("|".join(f"(?:{p})" for p in REQUESTS), re.IGNORECASE)
_KEYS = tuple((key, re.compile(pattern, re.IGNORECASE)) for key, pattern in IDENTITY_KEYS)
_VALUE = re.compile(rf"\d|@|[A-Za-z]_[A-Za-z0-9]|(?-i:\b(?:is|am|I{_A}m)\s+[A-Z][a-z]+)|\b[A-Z0-9]{{5,}}\b|:\s*\S")
_CONTENT_KINDS = frozenset({"wish", "ordering", "specifics"})


def is_quoted(sentence: str) -> bool:
    """Someone else's words: a quoted sentence, a `>` line, pasted error output or JSON."""
    return _QUOTED.match(sentence) is not None


def unquoted(sentence: str) -> str:
    """The sentence with quoted spans ("...", “...”) blanked: what its speaker says, not cites."""
    return _SPAN.sub(" \u2026 ", sentence)


def intent_kind(sentence: str) -> str | None:
    """The kind of intent one user sentence states (see the module doc), else None."""
    if is_quoted(sentence):
        return None
    text = _FALSE.sub(" \u2026 ", unquoted(sentence))
    if not sentence.rstrip().endswith("?"):
        return _statement_kind(text)
    stated = _ASIDE.split(text)[:-1]  # the statements before the question
    return next((kind for part in stated if (kind := _statement_kind(part))), None) or _question_kind(text)


def _statement_kind(text: str) -> str | None:
    for kind, pattern in _CUES:
        if pattern.search(text) and _enough(kind, text):
            return kind
    if _is_order(text) and content_words(text) >= MIN_CONTENT_WORDS:
        return "wish"
    return None


def _enough(kind: str, text: str) -> bool:
    """An identity needs a value (a figure, an address, a name); a wish, an order or details
    need content words."""
    if kind == "identity":
        return _VALUE.search(text) is not None
    return kind not in _CONTENT_KINDS or content_words(text) >= MIN_CONTENT_WORDS


def identity_key(sentence: str) -> str | None:
    """The identity fact an identity sentence states (`email`, `name`, `user_id` ...): the key of
    `IDENTITY_KEYS` the sentence names first (ties go to the table's order), else None (not an
    identity sentence)."""
    if intent_kind(sentence) != "identity":
        return None
    found = [
        (match.start(), rank, key) for rank, (key, pattern) in enumerate(_KEYS) if (match := pattern.search(sentence))
    ]
    return min(found)[2] if found else None


def is_identity(sentence: str) -> bool:
    """A sentence naming the person (kept even when shorter than three words: a bare e-mail)."""
    return intent_kind(sentence) == "identity"


def content_words(text: str) -> int:
    """Words that are not function words ("keep the boots" has two)."""
    return sum(1 for w in _WORD.findall(text) if w.lower().replace("\u2019", "'") not in FUNCTION_WORDS)


def _question_kind(text: str) -> str | None:
    """A request put as a question is a wish; a detailed question is the request's specifics."""
    words = content_words(text)
    if _REQUESTS.search(text) and words >= MIN_CONTENT_WORDS:
        return "wish"
    if words >= DETAILED_QUESTION_WORDS and _DETAIL.search(text):
        return "specifics"
    return None


def _is_order(text: str) -> bool:
    """A clause that opens, after greetings and discourse words, with an imperative verb
    ("Cancel #W4836353", "I have converted it, use head to explore the format")."""
    for clause in _CLAUSE.split(text):
        rest = _LEAD.sub("", clause.lstrip("*_`(\"' ")).lstrip("*_`(\"' ")
        words = rest.split()
        match = _WORD.match(rest)
        if match is None or len(words) < 2:
            continue
        verb = match.group(0).lower()
        if verb in IMPERATIVE_VERBS or (_OBJECT.match(words[1]) and verb in _mistyped_verbs(IMPERATIVE_VERBS)):
            return True
    return False


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def warm() -> None:
    """Build the typo table now: its first use builds it (about 20 ms), so the gateway calls this
    at start-up and no request pays for it."""
    _mistyped_verbs(IMPERATIVE_VERBS)


@cache
def _mistyped_verbs(verbs: frozenset[str]) -> frozenset[str]:
    """Every word one edit from a verb of TYPO_VERB_LENGTH letters or more: a letter missing, extra,
    wrong or two swapped (built once per table, on first use)."""
    long_verbs = [v for v in verbs if len(v) >= TYPO_VERB_LENGTH and v.isalpha()]
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    near: set[str] = set()
    for verb in long_verbs:
        near |= _deletions(verb)
        for i in range(len(verb) + 1):
            near |= {verb[:i] + c + verb[i:] for c in alphabet}
        for i in range(len(verb)):
            near |= {verb[:i] + c + verb[i + 1 :] for c in alphabet}
        near |= {verb[:i] + verb[i + 1] + verb[i] + verb[i + 2 :] for i in range(len(verb) - 1)}
    return frozenset(near - verbs - FUNCTION_WORDS)
