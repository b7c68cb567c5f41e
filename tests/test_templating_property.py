"""Property: whatever a --var holds, rendering keeps the document's structure."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ecsbatch import render_template

NAMES = ["A", "B", "IMAGE_TAG"]
placeholder = st.sampled_from([f"${{{n}}}" for n in NAMES] + ["$${", "plain", " ", "$", "}"])
template_text = st.lists(placeholder, max_size=6).map("".join)
leaf = st.one_of(template_text, st.integers(), st.booleans(), st.none())
documents = st.recursive(
    leaf,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["a", "b", "c", "${A}"]), children, max_size=4)),
    max_leaves=20,
)
values = st.fixed_dictionaries({name: st.text(max_size=30) for name in NAMES})


def shape(value):
    """The document with every string replaced by a marker: its structure."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return "<str>" if isinstance(value, str) else value


def expected_string(text, variables):
    out, i = "", 0
    while i < len(text):
        if text.startswith("$${", i):
            out, i = out + "${", i + 3
            continue
        for name in NAMES:
            token = f"${{{name}}}"
            if text.startswith(token, i):
                out, i = out + variables[name], i + len(token)
                break
        else:
            out, i = out + text[i], i + 1
    return out


def expected(value, variables):
    if isinstance(value, dict):
        return {key: expected(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [expected(item, variables) for item in value]
    return expected_string(value, variables) if isinstance(value, str) else value


def has_malformed(value):
    if isinstance(value, dict):
        return any(has_malformed(v) for v in value.values())
    if isinstance(value, list):
        return any(has_malformed(v) for v in value)
    if isinstance(value, str):
        rest = value
        for token in ["$${"] + [f"${{{n}}}" for n in NAMES]:
            rest = rest.replace(token, "")
        return "${" in rest
    return False


@settings(max_examples=300, deadline=None)
@given(documents, values)
def test_any_variable_content_renders_to_the_same_structure(document, variables):
    if has_malformed(document):
        return
    rendered = render_template(document, variables, "f.yaml")
    assert shape(rendered) == shape(document)
    assert rendered == expected(document, variables)
    # Written out and read back as YAML, the rendered document is still the same document.
    assert yaml.safe_load(yaml.safe_dump(rendered)) == rendered
