"""A small FHIRPath evaluator for the subset that search-parameter expressions use.

Supported: paths (`Patient.name.given`), choice elements (`Patient.deceased`
finds `deceasedBoolean` or `deceasedDateTime`), unions (`a | b`), `and`, `=`,
`!=`, `is` / `as` with a type name, string and boolean literals, and the
functions `where(…)`, `exists()`, `resolve()`, `extension('url')`, `ofType(T)`
and `as(T)`.

Anything else is refused by `compile_path` with a `FhirPathError`, so an
expression this module cannot evaluate fails when the parameter table loads
rather than silently matching nothing.

`resolve()` needs no database: a `#id` reference resolves to the contained
resource; any other reference resolves to a stub that knows only its type,
which is all that `where(resolve() is Patient)` asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The type suffixes a choice element `name[x]` can carry in JSON (`valueReference`).
_PRIMITIVE_SUFFIXES = frozenset({
    "Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id",
    "Instant", "Integer", "Markdown", "Oid", "PositiveInt", "String", "Time", "UnsignedInt",
    "Uri", "Url", "Uuid",
})  # fmt: skip
_CHOICE_SUFFIXES = _PRIMITIVE_SUFFIXES | frozenset({
    "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactPoint",
    "Count", "Distance", "Duration", "HumanName", "Identifier", "Money", "Period", "Quantity",
    "Range", "Ratio", "Reference", "SampledData", "Signature", "Timing", "ContactDetail",
    "Contributor", "DataRequirement", "Expression", "ParameterDefinition", "RelatedArtifact",
    "TriggerDefinition", "UsageContext", "Dosage", "Meta",
})  # fmt: skip
_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


class FhirPathError(ValueError):
    """The expression uses FHIRPath this evaluator does not implement."""


def reference_target(reference: str) -> tuple[str, str] | None:
    """`(type, id)` of a relative or absolute reference ending in `Type/id`, else None."""
    if reference.startswith("#"):
        return None
    found = _REFERENCE.search(reference)
    return (found["type"], found["id"]) if found else None


@dataclass(frozen=True)
class _Node:
    """One item of a collection: a JSON value and, when known, its FHIR type."""

    value: Any
    type: str | None = None


Collection = list[_Node]
_Evaluator = Callable[[Collection, Mapping[str, Any]], Collection]


def _type_name(suffix: str) -> str:
    """`DateTime` -> `dateTime` (primitive type names start lower case)."""
    return suffix[0].lower() + suffix[1:] if suffix in _PRIMITIVE_SUFFIXES else suffix


def _items(value: Any, type_: str | None = None) -> Iterator[_Node]:
    if isinstance(value, list):
        for item in value:
            yield _Node(item, type_)
    elif value is not None:
        yield _Node(value, type_)


def _node_type(node: _Node) -> str | None:
    if node.type is not None:
        return node.type
    if isinstance(node.value, Mapping):
        resource_type = node.value.get("resourceType")
        return resource_type if isinstance(resource_type, str) else None
    return None


def _child(name: str) -> _Evaluator:
    def navigate(focus: Collection, root: Mapping[str, Any]) -> Collection:
        found: Collection = []
        for node in focus:
            element = node.value
            if not isinstance(element, Mapping):
                continue
            if name in element:
                found.extend(_items(element[name]))
                continue
            for key, value in element.items():
                suffix = key[len(name) :]
                if key.startswith(name) and suffix in _CHOICE_SUFFIXES:
                    found.extend(_items(value, _type_name(suffix)))
        return found

    return navigate


def _type_filter(name: str) -> _Evaluator:
    """A leading type name (`Patient.` or `Resource.`): keep the focus if it is one."""

    def keep(focus: Collection, root: Mapping[str, Any]) -> Collection:
        if name in ("Resource", "DomainResource"):
            return [node for node in focus if _node_type(node) is not None]
        return [node for node in focus if _node_type(node) == name]

    return keep


def _is_type(operand: _Evaluator, type_name: str) -> _Evaluator:
    def check(focus: Collection, root: Mapping[str, Any]) -> Collection:
        nodes = operand(focus, root)
        if len(nodes) != 1:
            return []
        return [_Node(_node_type(nodes[0]) == type_name)]

    return check


def _as_type(operand: _Evaluator, type_name: str) -> _Evaluator:
    def cast(focus: Collection, root: Mapping[str, Any]) -> Collection:
        return [node for node in operand(focus, root) if _node_type(node) == type_name]

    return cast


def _resolve(focus: Collection, root: Mapping[str, Any]) -> Collection:
    resolved: Collection = []
    for node in focus:
        if not isinstance(node.value, Mapping):
            continue
        reference = node.value.get("reference")
        if isinstance(reference, str) and reference.startswith("#"):
            for contained in root.get("contained") or ():
                if isinstance(contained, Mapping) and contained.get("id") == reference[1:]:
                    resolved.append(_Node(contained))
            continue
        target = reference_target(reference) if isinstance(reference, str) else None
        declared = node.value.get("type")
        type_name = target[0] if target else declared if isinstance(declared, str) else None
        if type_name:
            # A stub: the type is known, the content is not (it lives elsewhere).
            resolved.append(_Node({}, type_name))
    return resolved


def _exists(focus: Collection, root: Mapping[str, Any]) -> Collection:
    return [_Node(bool(focus))]


def _where(criteria: _Evaluator) -> _Evaluator:
    def keep(focus: Collection, root: Mapping[str, Any]) -> Collection:
        return [node for node in focus if _truth(criteria([node], root)) is True]

    return keep


def _extension(url: str) -> _Evaluator:
    def pick(focus: Collection, root: Mapping[str, Any]) -> Collection:
        return [
            extension
            for extension in _child("extension")(focus, root)
            if isinstance(extension.value, Mapping) and extension.value.get("url") == url
        ]

    return pick


def _chain(first: _Evaluator, then: _Evaluator) -> _Evaluator:
    def run(focus: Collection, root: Mapping[str, Any]) -> Collection:
        return then(first(focus, root), root)

    return run


def _union(left: _Evaluator, right: _Evaluator) -> _Evaluator:
    def run(focus: Collection, root: Mapping[str, Any]) -> Collection:
        merged: Collection = []
        for node in left(focus, root) + right(focus, root):
            if node not in merged:
                merged.append(node)
        return merged

    return run


def _truth(collection: Collection) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean (None = empty)."""
    if not collection:
        return None
    if len(collection) == 1 and isinstance(collection[0].value, bool):
        return collection[0].value
    return True


def _equals(left: _Evaluator, right: _Evaluator, *, negate: bool) -> _Evaluator:
    def compare(focus: Collection, root: Mapping[str, Any]) -> Collection:
        lhs, rhs = left(focus, root), right(focus, root)
        if not lhs or not rhs:
            return []
        equal = [node.value for node in lhs] == [node.value for node in rhs]
        return [_Node(equal != negate)]

    return compare


def _and(left: _Evaluator, right: _Evaluator) -> _Evaluator:
    def both(focus: Collection, root: Mapping[str, Any]) -> Collection:
        lhs, rhs = _truth(left(focus, root)), _truth(right(focus, root))
        if lhs is False or rhs is False:
            return [_Node(False)]
        if lhs is None or rhs is None:
            return []
        return [_Node(True)]

    return both


def _literal(value: Any) -> _Evaluator:
    def constant(focus: Collection, root: Mapping[str, Any]) -> Collection:
        return [_Node(value)]

    return constant


def _identity(focus: Collection, root: Mapping[str, Any]) -> Collection:
    return focus


_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<quoted>`[^`]+`)|(?P<op>!=|[.()|=,]))"
)
_KEYWORDS = frozenset({"and", "is", "as", "true", "false"})


def _tokenize(expression: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(expression):
        if expression[position:].strip() == "":
            break
        found = _TOKEN.match(expression, position)
        if not found:
            raise FhirPathError(f"unsupported FHIRPath at {expression[position:]!r}")
        token = found.group(found.lastgroup or 0)
        tokens.append(token[1:-1] if found.lastgroup == "quoted" else token)
        position = found.end()
    return tokens


class _Parser:
    """Recursive descent, FHIRPath precedence: `.` > `|` > `is`/`as` > `=`/`!=` > `and`."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.position = 0

    def fail(self, what: str) -> FhirPathError:
        return FhirPathError(f"{what} in FHIRPath {self.expression!r}")

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise self.fail(f"expected {expected or 'more'}, found {token!r}")
        self.position += 1
        return token

    def parse(self) -> _Evaluator:
        evaluator = self.and_expression()
        if self.peek() is not None:
            raise self.fail(f"unsupported token {self.peek()!r}")
        return evaluator

    def and_expression(self) -> _Evaluator:
        evaluator = self.equality()
        while self.peek() == "and":
            self.take()
            evaluator = _and(evaluator, self.equality())
        return evaluator

    def equality(self) -> _Evaluator:
        evaluator = self.type_expression()
        if self.peek() in ("=", "!="):
            negate = self.take() == "!="
            evaluator = _equals(evaluator, self.type_expression(), negate=negate)
        return evaluator

    def type_expression(self) -> _Evaluator:
        evaluator = self.union()
        if self.peek() in ("is", "as"):
            operator = self.take()
            type_name = self.type_name()
            make = _is_type if operator == "is" else _as_type
            evaluator = make(evaluator, type_name)
        return evaluator

    def type_name(self) -> str:
        name = self.take()
        if not name[:1].isalpha() or name in _KEYWORDS or self.peek() == ".":
            raise self.fail(f"unsupported type specifier {name!r}")
        return name

    def union(self) -> _Evaluator:
        evaluator = self.path()
        while self.peek() == "|":
            self.take()
            evaluator = _union(evaluator, self.path())
        return evaluator

    def path(self) -> _Evaluator:
        evaluator = self.term()
        while self.peek() == ".":
            self.take()
            evaluator = _chain(evaluator, self.invocation(self.take()))
        return evaluator

    def term(self) -> _Evaluator:
        word = self.take()
        if word == "(":
            evaluator = self.and_expression()
            self.take(")")
            return evaluator
        if word.startswith("'"):
            return _literal(_unquote(word))
        if word in ("true", "false"):
            return _literal(word == "true")
        if word[:1].isupper() and self.peek() != "(":
            return _type_filter(word)
        return self.invocation(word)

    def invocation(self, name: str) -> _Evaluator:
        if not (name[:1].isalpha() or name[:1] == "_") or name in _KEYWORDS:
            raise self.fail(f"unsupported token {name!r}")
        if self.peek() != "(":
            return _child(name)
        self.take("(")
        if name == "where":
            evaluator = _where(self.and_expression())
        elif name in ("ofType", "as"):
            evaluator = _as_type(_identity, self.type_name())
        elif name == "extension":
            url = self.take()
            if not url.startswith("'"):
                raise self.fail("extension() takes a string literal")
            evaluator = _extension(_unquote(url))
        elif name == "exists":
            evaluator = _exists
        elif name == "resolve":
            evaluator = _resolve
        else:
            raise self.fail(f"unsupported function {name}()")
        self.take(")")
        return evaluator


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


@dataclass(frozen=True)
class Expression:
    """A compiled FHIRPath expression: `evaluate(resource)` returns the values it selects.

    `roots` are the top-level elements every branch of the expression starts from
    (`Task.owner | Task.requester` → owner, requester), or None when a branch does not
    start with `Type.element`. A resource with no key starting with a root (a choice
    element `deceased` is stored as `deceasedBoolean`) selects nothing, so `evaluate`
    returns at once: most search parameters of a type find nothing in a small resource.
    """

    text: str
    _evaluator: _Evaluator
    roots: tuple[str, ...] | None = None

    def evaluate(self, resource: Mapping[str, Any]) -> list[Any]:
        roots = self.roots
        if roots is not None and not any(key.startswith(roots) for key in resource):
            return []
        return [node.value for node in self._evaluator([_Node(resource)], resource)]


# A branch that navigates from the resource: `Type.element…`, perhaps in parentheses.
_ROOTED_BRANCH = re.compile(r"\(*\s*[A-Z][A-Za-z]*\.([a-z][A-Za-z0-9]*)\b")
# A function's arguments (`where(system = 'email')`): they filter what is there already.
_ARGUMENTS = re.compile(r"(?<=[A-Za-z])\((?:[^()']|'(?:[^'\\]|\\.)*')*\)")
# What can make something of nothing: `X.exists()` and `X and Y` are false, not empty,
# when X is absent; comparisons and `is` are left out as well, to stay on the safe side.
_FROM_NOTHING = re.compile(r"\bexists\b|\band\b|=|\bis\b|\bempty\b|\bnot\b")


def _roots(expression: str) -> tuple[str, ...] | None:
    """The top-level elements every branch starts from; None when unsure (see `Expression`)."""
    roots = []
    for branch in split_union(expression):
        found = _ROOTED_BRANCH.match(branch)
        outside = branch
        while (stripped := _ARGUMENTS.sub("", outside)) != outside:
            outside = stripped
        if found is None or _FROM_NOTHING.search(outside):
            return None
        roots.append(found.group(1))
    return tuple(dict.fromkeys(roots))


@lru_cache(maxsize=1024)
def compile_path(expression: str) -> Expression:
    """Compile `expression`, or raise `FhirPathError` if it uses unsupported FHIRPath."""
    return Expression(expression, _Parser(expression).parse(), _roots(expression))


def split_union(expression: str) -> Sequence[str]:
    """The top-level `|` branches of an expression (outside parentheses and strings)."""
    branches: list[str] = []
    depth, start, quoted = 0, 0, False
    for index, char in enumerate(expression):
        if quoted:
            quoted = not (char == "'" and expression[index - 1] != "\\")
        elif char == "'":
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(expression[start:index].strip())
            start = index + 1
    branches.append(expression[start:].strip())
    return branches
