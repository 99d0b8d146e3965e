"""A site's `_redirects` and `_headers` files, in Netlify's format (the part people use).

`_redirects`: one rule a line, `FROM TO [STATUS][!]`, first match wins.
FROM is a path whose segments may be `:name` placeholders and whose end may
be a `*` splat, written plain or percent-encoded (`/caf%C3%A9` is `/café`, as
the request's path is matched decoded); TO may use those as `:name` and
`:splat` (any other `:word`, as in `/wiki/Help:Contents`, is left as it is). A
`#` begins a comment at the start of a line or after a space, so a TO may
hold a fragment (`/about#team`). STATUS is 301 (the
default), 302, 303, 307 or 308 for a redirect (TO may then be a full URL), and
200 or 404 to answer with TO's file instead (a rewrite: `/*  /index.html  200`
is a single-page app's fallback). As on Netlify, a rule applies only when no
file answers the path, unless its status ends with `!`; among the rules that
apply, the first one wins. When the site has a back end (`api/main.js`), a
rule for a path under `/api` never applies (the handler answers there): the
deploy refuses it rather than leave it silently dead. A redirect that comes
back round (`/a /a`, `/a /b` with `/b /a`) is refused too.

`_headers`: a path line (placeholders and splat as above), then indented
`Name: value` lines; every block whose path matches adds its headers to a
static response, values of one name from several blocks joined with ", ".

Both files are parsed at deploy: a bad line refuses the deploy with its line
number, so the previous version keeps serving. Neither is ever served itself.
"""

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from fazt.constants import SCRIPT
from fazt.errors import FaztError
from fazt.store.sites import NewFile

REDIRECTS = "_redirects"
HEADERS = "_headers"
RULE_FILES = (REDIRECTS, HEADERS)
MAX_FILE_BYTES = 256 * 1024  # rules are matched one by one on a request: keep them few
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
REWRITE_CODES = frozenset({200, 404})
# fazt owns these: framing, validators, the negotiation's Vary, the ones every answer
# carries once (Date, Server) and HTTPS's HSTS (the https settings); and the hop-by-hop
# ones Waitress refuses from an application (PEP 3333), which made a thread's answer a 500
# while the event loop's fast path sent the file
RESERVED_HEADERS = frozenset({
    "content-length", "content-encoding", "content-range", "transfer-encoding", "connection",
    "keep-alive", "upgrade", "trailer", "trailers", "te", "proxy-authenticate",
    "proxy-authorization", "etag", "last-modified", "vary", "accept-ranges", "set-cookie",
    "date", "server", "strict-transport-security",
})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*\Z")
_PLACEHOLDER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_SEGMENT_PLACEHOLDER = re.compile(r"(?:^|/):([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT = re.compile(r"(?:^|\s)#")
_STATUS = re.compile(r"^[0-9]{3}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")  # a tab is a space
_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Pattern:
    """A FROM path: literal segments, `:name` segments, and an optional trailing `*`."""

    text: str
    regex: re.Pattern
    names: frozenset[str]

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        return m.groupdict() if m else None


@dataclass(frozen=True)
class Rule:
    line: int
    source: Pattern
    target: str
    status: int
    force: bool

    @property
    def rewrite(self) -> bool:
        return self.status in REWRITE_CODES

    def destination(self, params: dict[str, str]) -> str:
        """TO with the placeholders filled in from the matched path (a `:word` FROM
        does not define stays as it is)."""
        return _PLACEHOLDER.sub(lambda m: params.get(m.group(1), m.group(0)), self.target)


@dataclass(frozen=True)
class HeaderBlock:
    line: int
    source: Pattern
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SiteRules:
    """A site's parsed rules; EMPTY when it has neither file."""

    redirects: tuple[Rule, ...] = ()
    header_blocks: tuple[HeaderBlock, ...] = ()
    _forced: tuple[Rule, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, redirects: tuple[Rule, ...], header_blocks: tuple[HeaderBlock, ...]
           ) -> "SiteRules":
        return cls(redirects, header_blocks, tuple(r for r in redirects if r.force))

    def forced(self, path: str) -> tuple[Rule, dict[str, str]] | None:
        """The first `!` rule for `path`: the rule for a path a file answers."""
        return _first(self._forced, path)

    def fallback(self, path: str) -> tuple[Rule, dict[str, str]] | None:
        """The first rule for a path no file answers, forced or not."""
        return _first(self.redirects, path)

    def headers_for(self, path: str) -> list[tuple[str, str]]:
        merged: dict[str, tuple[str, str]] = {}
        for block in self.header_blocks:
            if block.source.match(path) is None:
                continue
            for name, value in block.headers:
                key = name.lower()
                if key in merged:
                    merged[key] = (merged[key][0], f"{merged[key][1]}, {value}")
                else:
                    merged[key] = (name, value)
        return list(merged.values())


EMPTY = SiteRules()


def _first(rules: Sequence[Rule], path: str) -> tuple[Rule, dict[str, str]] | None:
    for rule in rules:
        params = rule.source.match(path)
        if params is not None:
            return rule, params
    return None


def _pattern(text: str, file: str, line: int) -> Pattern:
    if not text.startswith("/"):
        raise _bad(file, line, f"the path {text!r} must start with '/'")
    body, splat = (text[:-1], True) if text.endswith("*") else (text, False)
    if "*" in body:
        raise _bad(file, line, "a '*' may only end a path")
    regex, names = "", set()
    for segment in body.split("/")[1:]:
        m = re.fullmatch(r":([A-Za-z_][A-Za-z0-9_]*)", segment)
        if m:
            if m.group(1) in names or m.group(1) == "splat":
                raise _bad(file, line, f"the placeholder ':{m.group(1)}' is used twice")
            names.add(m.group(1))
            regex += f"/(?P<{m.group(1)}>[^/]+)"
        else:
            regex += "/" + re.escape(unquote(segment))
    if splat:
        names.add("splat")
        regex += "(?P<splat>.*)"
    elif regex.endswith("/"):
        regex = regex[:-1] + "/?"  # "/blog/" and "/blog" are one path, as on Netlify
    else:
        regex += "/?"
    return Pattern(text, re.compile(rf"^{regex or '/'}\Z"), frozenset(names))


def _bad(file: str, line: int, why: str) -> FaztError:
    return FaztError(f"{file} line {line}: {why}.", code="bad_rules")


def _lines(text: str, file: str, strict: bool) -> Iterator[tuple[int, str]]:
    """Each line with its number as an editor counts them: str.splitlines also splits at
    form feeds, U+2028 and others, which put the number of every later line off. `strict`
    (at deploy): a line with a control character is refused; a file an older fazt took
    is read as it was then, its rules kept."""
    text = text.removeprefix("\ufeff")  # an editor's byte order mark is not part of a path
    for number, line in enumerate(_NEWLINE.split(text) if strict else text.splitlines(),
                                  start=1):
        if strict and _CONTROL.search(line):
            raise _bad(file, number, "the line holds a control character")
        yield number, line


def parse_redirects(text: str, strict: bool = True) -> tuple[Rule, ...]:
    """The rules of a `_redirects` file. Not `strict`: as `parse_headers`."""
    rules = []
    for number, raw in _lines(text, REDIRECTS, strict):
        fields = _COMMENT.split(raw, maxsplit=1)[0].split()
        if not fields:
            continue
        if len(fields) < 2:
            raise _bad(REDIRECTS, number, "a rule needs a FROM path and a TO path or URL")
        if len(fields) > 3:
            raise _bad(REDIRECTS, number, "fazt takes FROM TO [STATUS]; query-string and "
                       "country/language conditions are not supported")
        source = _pattern(fields[0], REDIRECTS, number)
        target = fields[1]
        status_text = fields[2] if len(fields) == 3 else "301"
        force = status_text.endswith("!")
        status_text = status_text.removesuffix("!")
        # ASCII digits only: str.isdigit() takes "²" (which int() refuses) and "٣٠١"
        if not _STATUS.match(status_text) or int(status_text) not in REDIRECT_CODES | REWRITE_CODES:
            raise _bad(REDIRECTS, number, f"the status {fields[2]!r} is not one of 200, 301, "
                       "302, 303, 307, 308, 404 (optionally followed by '!')")
        status = int(status_text)
        external = re.match(r"^https?://[^/\s]+", target) is not None
        if not external and not target.startswith("/"):
            raise _bad(REDIRECTS, number, f"the target {target!r} must be a path starting "
                       "with '/' or an http(s) URL")
        if external and status in REWRITE_CODES:
            raise _bad(REDIRECTS, number, "a 200 or 404 rule serves a file of this site; "
                       "proxying to another server is not supported")
        for name in _SEGMENT_PLACEHOLDER.findall(target.split("?", 1)[0]):
            if name not in source.names:  # a typo, most likely: ':word' elsewhere is text
                raise _bad(REDIRECTS, number, f"the target uses ':{name}', which the path "
                           f"{source.text!r} does not define")
        rules.append(Rule(number, source, target, status, force))
    return tuple(rules)


def parse_headers(text: str, strict: bool = True) -> tuple[HeaderBlock, ...]:
    """The blocks of a `_headers` file. Not `strict` (a file deployed by an older fazt,
    which allowed more names): a header fazt owns is left out instead of refused."""
    blocks: list[HeaderBlock] = []
    source: Pattern | None = None
    start, headers = 0, []

    def close() -> None:
        if source is not None:
            if not headers:
                raise _bad(HEADERS, start, f"the path {source.text!r} has no headers under it")
            blocks.append(HeaderBlock(start, source, tuple(headers)))

    for number, raw in _lines(text, HEADERS, strict):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not raw[0].isspace():
            close()
            if len(stripped.split()) != 1:
                raise _bad(HEADERS, number, "a path line holds one path and nothing else")
            source, start, headers = _pattern(stripped, HEADERS, number), number, []
            continue
        if source is None:
            raise _bad(HEADERS, number, "a header comes before any path")
        name, colon, value = stripped.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not _TOKEN.match(name):
            raise _bad(HEADERS, number, "a header line reads 'Name: value'")
        if name.lower() in RESERVED_HEADERS:
            if not strict:
                continue
            raise _bad(HEADERS, number, f"{name} cannot be set here (fazt sets it, "
                       "or a static file should not)")
        if not _VALUE.match(value):
            raise _bad(HEADERS, number, f"the value of {name} holds a control character or "
                       "a character outside Latin-1 (percent-encode it)")
        headers.append((name, value))
    close()
    return tuple(blocks)


def check_rules(files: list[NewFile]) -> list[NewFile]:
    """The deploy-time check: parse the site's rule files, refusing the deploy with
    the first bad line. Their pieces may be single-use, so the read bytes replace them."""
    out = []
    paths = {f.path for f in files} - set(RULE_FILES)
    backend = SCRIPT in paths
    for f in files:
        if f.path in RULE_FILES:
            text, f = f.read_text(MAX_FILE_BYTES, "bad_rules")
            if f.path == REDIRECTS:
                rules = parse_redirects(text)
                if backend:
                    _check_api_rules(rules)
                _check_loops(rules, paths, backend)
            else:
                parse_headers(text)
        out.append(f)
    return out


LOOP_HOPS = 20  # browsers give up after about as many redirects


def _check_loops(rules: tuple[Rule, ...], paths: set[str], backend: bool) -> None:
    """Refuse a redirect that comes back to where it began (`/a /a`, `/a/* /a/:splat`,
    `/a /b` with `/b /a`): a browser would go round until it gives up. Each rule is
    followed from where it sends a request (its placeholders given sample values), as
    the server would follow it: the rule that applies there, then the next, until a
    path comes round again, or a file, a rewrite, another host or the back end (under
    /api) answers. A chain that only grows (`/* /x/:splat` for a missing file) is left
    alone: it works for every path that exists."""
    site = SiteRules.of(rules, ())
    for rule in rules:
        if rule.rewrite:
            continue
        sample = {name: f"fazt{n}" for n, name in enumerate(sorted(rule.source.names))}
        path, seen = _local(rule.destination(sample)), set()
        for _ in range(LOOP_HOPS):
            if path is None or (backend and (path == "/api" or path.startswith("/api/"))):
                break  # (the handler answers under /api, before any rule)
            if path in seen:
                raise _bad(REDIRECTS, rule.line, f"the rule for {rule.source.text!r} sends "
                           "browsers round in a loop of redirects")
            seen.add(path)
            found = site.forced(path) if _answers(path, paths) else site.fallback(path)
            path = None if found is None or found[0].rewrite else \
                _local(found[0].destination(found[1]))


def _local(target: str) -> str | None:
    """The path a redirect to `target` makes the browser ask for, as the server matches it
    (decoded, without query or fragment); None for another host."""
    if not target.startswith("/") or target.startswith("//"):
        return None
    return unquote(target.split("#", 1)[0].split("?", 1)[0])


def _answers(path: str, paths: set[str]) -> bool:
    """Whether a file (or a folder's index.html) answers `path`: then only `!` rules apply."""
    name = path.lstrip("/")
    if not name or name.endswith("/"):
        return f"{name}index.html" in paths
    return name in paths or f"{name}/index.html" in paths


def _check_api_rules(rules: Sequence[Rule]) -> None:
    """With a back end, the handler answers every path under /api (before any rule is
    looked at): a rule written for one of them would never apply."""
    for rule in rules:
        text = rule.source.text
        if text in ("/api", "/api/", "/api/*") or text.startswith("/api/"):
            raise _bad(REDIRECTS, rule.line, f"the path {text!r} is under /api, where the "
                       f"site's back end ({SCRIPT}) answers every request; no rule applies "
                       "there")

