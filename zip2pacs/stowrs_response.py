"""What a STOW-RS service's answer means: for each instance, from the Store Instances Response (PS3.18 Annex I,
JSON or XML); for the destination, from the HTTP status or the transport error when no such answer came.

Servers differ in the HTTP status they give with the body (Orthanc's DICOMweb plugin answers 200 with failures
inside; 400 or 409 may follow parts already stored), so an instance's verdict comes from the body, never the status.
"""

from __future__ import annotations

import email.utils
import json
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests

from .verdicts import Outcome

if TYPE_CHECKING:
    from .stowrs import StowSettings

JUDGED_ALONE = (400, 409, 413, 422)  # refusals that may concern one instance: smaller requests find which
BUSY = (408, 429)  # the server is there but takes nothing now: the request's instances are retried later
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

# FailureReason values that say the instance is already on the server: delivered, so recorded as stored.
# 0x0111 is DICOM's "Duplicate SOP Instance" (PS3.7 C.4); 45070 (0xB00E) is Azure's DICOM service's.
ALREADY_THERE = {0x0111: "duplicate SOP instance", 0xB00E: "instance already exists"}
# PS3.18 Table I.2-2, and the codes C-STORE shares with it.
FAILURE_WORDS = {
    0xA700: "refused: out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
    0x0110: "processing failure",
    0x0122: "referenced SOP class not supported",
    0x0124: "not authorized",
    0x0213: "resource limitation",
}
WARNING_WORDS = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


class DestinationUnavailable(Exception):
    """Nothing could be stored (unreachable, TLS failure, credentials refused, server error): delivery is delayed."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After), when it did
        self.status = status  # the HTTP status that said so; None: no answer (unreachable, TLS, ...)


class CredentialsRefused(DestinationUnavailable):
    """The server refused our credentials (401/403; ``status`` None: we had no token to send): the destination pauses."""

    def __init__(self, message: str, status: int | None, retry_after: float | None = None):
        super().__init__(message, retry_after, status)


@dataclass(frozen=True)
class Mention:
    """One item of the ReferencedSOPSequence (failed=False) or FailedSOPSequence (failed=True)."""

    sop_instance_uid: str  # "" when the item names no instance
    failed: bool
    code: int | None  # FailureReason for a failed item, WarningReason (or None) for a stored one


@dataclass(frozen=True)
class Answer:
    mentions: tuple[Mention, ...]
    readable: bool  # False: the body is no Store Instances Response (empty, an HTML error page, ...)


@dataclass(frozen=True)
class Reply:
    """One request's answer, as far as it bears on the instances sent."""

    status: int | None  # None: no answer came
    answer: Answer
    words: str  # the HTTP status, or what happened, in words
    busy: bool  # every instance of the request is retried later, whatever the body says
    retry_after: float | None = None


@dataclass(frozen=True)
class CheckResult:
    """What `--check` learnt from one QIDO-RS query, and what no query can tell."""

    url: str  # what was asked: GET {base}/studies?limit=1
    status: int
    seconds: float  # the round trip, connection included
    ok: bool  # True: a DICOMweb service answered the query and took our credentials
    proven: str
    unproven: str


Verdict = tuple[Outcome, int | None, str]  # outcome, the DICOM status (FailureReason, WarningReason, 0), detail


def judge(uids: Sequence[str], reply: Reply) -> tuple[dict[int, Verdict], list[int]]:
    """Return the verdicts an answer settles, by position in the request, and the positions to send again.

    An answer to several instances that does not name one is no verdict on it: the server may have stopped at
    another (Orthanc 1.7 does) or refused the request for one part. Those are sent again, in smaller requests,
    until each is alone: then a refusal without detail (400, 409, 413, 422) is its own, anything else unknown.
    """
    if reply.busy:
        return {p: (Outcome.TRANSIENT, None, reply.words) for p in range(len(uids))}, []
    # Named in both lists (a server's quirk): the stored mention, sorted last, wins; the server says it has it.
    named = {m.sop_instance_uid: m for m in sorted(reply.answer.mentions, key=lambda m: not m.failed)}
    settled: dict[int, Verdict] = {}
    unnamed = []
    for position, uid in enumerate(uids):
        mention = named.get(uid)
        if mention is None:
            unnamed.append(position)
            continue
        outcome, words = verdict(mention)
        settled[position] = (outcome, mention.code if mention.failed else mention.code or 0, f"{words} ({reply.words})")
    if len(uids) > 1 and (reply.answer.readable or reply.status in JUDGED_ALONE):
        return settled, unnamed
    strangers = [m for m in reply.answer.mentions if m.failed and m.sop_instance_uid not in uids]
    for position in unnamed:
        if len(uids) == 1 and strangers:  # a failure that names no instance of ours, in a request of one
            outcome, words = verdict(strangers[0])
            settled[position] = (outcome, strangers[0].code, f"{words} ({reply.words}; the answer names no instance)")
        elif len(uids) == 1 and reply.status in JUDGED_ALONE:
            settled[position] = (Outcome.PERMANENT, None, f"refused: {reply.words}, for this instance sent alone")
        else:
            what = "an answer that does not name it" if reply.answer.readable else "no Store Instances Response"
            settled[position] = (Outcome.TRANSIENT, None, f"unknown: {reply.words} with {what}; retried later")
    return settled, []


def read(response: requests.Response, settings: StowSettings, url: str) -> Reply:
    """Return what a STOW-RS answer says; raise DestinationUnavailable when it says the service cannot be used."""
    status = response.status_code
    words = f"HTTP {status} {response.reason or ''}".rstrip()
    wait = retry_after(response.headers.get("Retry-After"))
    if wait is not None:
        words += f", retry after {wait:g} s"
    if status in (401, 403):
        raise CredentialsRefused(refused(settings, words), status, wait)
    if status in BUSY:
        return Reply(status, Answer((), False), f"the server is busy ({words})", True, wait)
    if 200 <= status < 300 or status in JUDGED_ALONE:
        return Reply(status, parse(response.content), words, False, wait)
    hint = {
        404: f": no STOW-RS service at {url} (base_url is the DICOMweb root, before /studies)",
        405: f": {url} does not take POST (base_url is the DICOMweb root, before /studies)",
        415: ": it does not take multipart/related; type=application/dicom",
    }.get(status, "")
    if 300 <= status < 400:
        hint = f": it redirects to {response.headers.get('Location', '?')} (set base_url to where it points)"
    raise DestinationUnavailable(f"{settings.label}: the server answered {words}{hint}", wait, status)


def refused(settings: StowSettings, words: str) -> str:
    """Say that the server refuses our credentials, what we sent (by its configuration key) and what to fix.

    The secret itself is never part of it.
    """
    s = settings
    if s.token_file is not None:
        sent, fix = f"the bearer token in token_file {s.token_file}", "put a valid token in that file"
    elif s.token_env is not None:
        sent, fix = f"the bearer token in ${s.token_env} (token_env)", f"set a valid token in ${s.token_env}"
    elif s.username is not None:
        sent, fix = f"Basic authentication as username {s.username!r}", "correct username and password in the config"
    else:
        sent = "no username, password or token" + (" (a client certificate only: cert_file)" if s.cert_file else "")
        fix = "give the destination username/password, token_file or token_env"
    return (
        f"{s.label}: the server refuses our credentials ({words}); we sent {sent}: {fix}, "
        "and check that this account may store"
    )


def unavailable(exc: requests.exceptions.RequestException, settings: StowSettings, url: str) -> DestinationUnavailable:
    """Return the exception that says why no answer came, naming the destination and host."""
    host = urllib.parse.urlsplit(url).netloc
    if isinstance(exc, requests.exceptions.SSLError):
        return DestinationUnavailable(
            f"{settings.label}: TLS with {host} failed: {reason(exc)} (trusting {settings.ca_file or 'the system CA store'}; "
            "check ca_file, the server's certificate and its host name, or the client certificate)"
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return DestinationUnavailable(f"{settings.label}: no connection to {host} within {settings.timeout:g} s")
    return DestinationUnavailable(f"{settings.label}: cannot reach {host}: {reason(exc)}")


def check_result(status: int, url: str, seconds: float, settings: StowSettings, verified: bool) -> CheckResult:
    """Say what a QIDO-RS answer that is no refusal proves, and what it cannot."""
    s = settings
    if not url.lower().startswith("https:"):
        clear = ": credentials travel in clear" if s.username is not None or s.has_token else ""
        channel = f"over plain HTTP (not encrypted{clear})"
    elif not verified:
        channel = "over HTTPS without verifying its certificate (verify: false)"
    else:
        channel = f"over HTTPS, its certificate verified against {s.ca_file or 'the system CA store'}"
    took = "took our credentials" if s.username is not None or s.has_token else "asked for no credentials"
    unproven = "that these credentials may store (only sending proves it), nor which SOP classes and syntaxes it takes"
    if 200 <= status < 300:
        return CheckResult(
            url, status, seconds, True, f"{url} answers QIDO-RS (HTTP {status}) {channel}, and {took}", unproven
        )
    proven = f"a server answers {url} (HTTP {status}) {channel}, and did not refuse our credentials"
    return CheckResult(
        url, status, seconds, False, proven, f"that a DICOMweb service is there (no QIDO-RS answer); {unproven}"
    )


def retry_after(value: str | None) -> float | None:
    """Return the seconds a Retry-After header asks for (a number or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def reason(exc: BaseException) -> str:
    """Return the innermost cause's words: requests wraps urllib3's error, which wraps the socket's."""
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or inner is exc:
            return str(exc)
        exc = inner


def parse(body: bytes) -> Answer:
    """Return the instances a response body names as stored or failed; an unreadable body names none."""
    text = body.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    try:
        if text.startswith("<"):
            return Answer(tuple(_xml_mentions(text)), True)
        if text.startswith(("{", "[")):
            return Answer(tuple(_json_mentions(json.loads(text))), True)
    except (ValueError, ElementTree.ParseError, AttributeError, TypeError):
        pass
    return Answer((), False)


def verdict(mention: Mention) -> tuple[Outcome, str]:
    """Return the outcome a mention means and the words that say why."""
    code = mention.code
    if not mention.failed:
        if code is None or code == 0:
            return Outcome.STORED, "stored"
        return Outcome.WARNING, f"stored with warning 0x{code:04X} {WARNING_WORDS.get(code, '')}".rstrip()
    if code is None:
        return Outcome.PERMANENT, "refused (no failure reason given)"
    words = f"0x{code:04X} {ALREADY_THERE.get(code) or FAILURE_WORDS.get(code) or _family(code)}".rstrip()
    if code in ALREADY_THERE:
        return Outcome.STORED, f"already on the server ({words})"
    if code & 0xFF00 == 0xA700 or code == 0x0213:
        return Outcome.TRANSIENT, f"refused for now ({words})"  # out of resources: the same instance may go later
    return Outcome.PERMANENT, f"refused ({words})"


def _family(code: int) -> str:
    if code & 0xFF00 == 0xA900:
        return FAILURE_WORDS[0xA900]
    if code & 0xF000 == 0xC000:
        return FAILURE_WORDS[0xC000]
    return ""


def _json_mentions(document: object) -> Iterator[Mention]:
    # One data set, or (some servers) an array of them, one per study.
    for dataset in document if isinstance(document, list) else [document]:
        if not isinstance(dataset, dict):
            continue
        for tag, failed in ((REFERENCED_SOP_SEQUENCE, False), (FAILED_SOP_SEQUENCE, True)):
            for item in _json_values(dataset.get(tag)):
                if isinstance(item, dict):
                    uid = _json_values(item.get(REFERENCED_SOP_INSTANCE_UID))
                    code = _json_values(item.get(FAILURE_REASON if failed else WARNING_REASON))
                    yield Mention(str(uid[0]).strip() if uid else "", failed, _code(code[0]) if code else None)


def _json_values(attribute: object) -> list[object]:
    if not isinstance(attribute, dict):
        return []
    values = attribute.get("Value")
    return values if isinstance(values, list) else []


def _xml_mentions(text: str) -> Iterator[Mention]:
    # The PS3.19 Native DICOM Model; the namespace is left out of the names, as servers differ in using it.
    root = ElementTree.fromstring(text)
    for attribute in _children(root, "DicomAttribute"):
        tag = attribute.get("tag", "").upper()
        if tag not in (REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE):
            continue
        failed = tag == FAILED_SOP_SEQUENCE
        for item in _children(attribute, "Item"):
            values = {a.get("tag", "").upper(): _xml_value(a) for a in _children(item, "DicomAttribute")}
            code = values.get(FAILURE_REASON if failed else WARNING_REASON)
            uid = values.get(REFERENCED_SOP_INSTANCE_UID) or ""
            yield Mention(uid.strip(), failed, _code(code) if code else None)


def _children(element: ElementTree.Element, name: str) -> Iterator[ElementTree.Element]:
    return (child for child in element if child.tag.rsplit("}", 1)[-1] == name)


def _xml_value(attribute: ElementTree.Element) -> str:
    return next((value.text or "" for value in _children(attribute, "Value")), "")


def _code(value: object) -> int | None:
    """Return a reason code written as a JSON number, or as text: in decimal, or in hex ("0110", "A700", "0xC000")."""
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    try:
        if text.isdigit() and not text.startswith("0"):  # no decimal code of interest starts with 0 ("0110" is hex)
            return int(text)
        return int(text.removeprefix("0x").removeprefix("0X"), 16)
    except ValueError:
        return None
