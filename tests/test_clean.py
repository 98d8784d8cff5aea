"""Tests for text normalisation and HTML stripping."""
from __future__ import annotations

from tunesmith.data.clean import clean_example, normalize_text
from tunesmith.data.example import Example


def test_nfkc_and_zero_width():
    assert normalize_text("ﬁne café\u200b ①") == "fine café 1"
    assert normalize_text("Ｆｕｌｌ\u00a0width") == "Full width"
    assert normalize_text("soft\u00adhyphen and\ufeffbom") == "softhyphen andbom"


def test_control_characters_removed_but_newlines_and_tabs_handled():
    assert normalize_text("a\x00b\x07c") == "abc"
    assert normalize_text("col1\tcol2") == "col1 col2"
    assert normalize_text("line1\r\nline2\rline3") == "line1\nline2\nline3"


def test_whitespace_collapsing():
    assert normalize_text("  hello   \t world  ") == "hello world"
    assert normalize_text("a   \nb\t \n\n\n\n\nc") == "a\nb\n\nc"
    assert normalize_text("keep\n\nparagraphs") == "keep\n\nparagraphs"
    assert normalize_text("") == ""
    assert normalize_text(" \n\t ") == ""


def test_html_imdb_line_breaks_and_entities():
    raw = ("I loved this movie.<br /><br />The acting was great &amp; the plot &quot;twisty&quot;."
           "<br><br/>10/10")
    assert normalize_text(raw, strip_html=True) == (
        'I loved this movie.\n\nThe acting was great & the plot "twisty".\n\n10/10'
    )


def test_html_tags_dropped_and_blocks_become_newlines():
    raw = "<p>First <b>bold</b> para.</p><p>Second <a href='x'>link</a>.</p>"
    assert normalize_text(raw, strip_html=True) == "First bold para.\nSecond link."
    assert normalize_text("<BR CLASS='x'>Hi", strip_html=True) == "Hi"


def test_script_style_and_comments_removed_with_content():
    raw = ("<style>p { color: red; }</style>Visible<script type='text/javascript'>"
           "alert('x < y');</script> text<!-- hidden -->")
    assert normalize_text(raw, strip_html=True) == "Visible text"


def test_html_does_not_mangle_comparisons():
    text = "a < b and c > d, also x<5 and 3 <= 4 & a -> b"
    assert normalize_text(text, strip_html=True) == text
    assert normalize_text("if a<b>c then", strip_html=True) == "if ac then"  # <b> is a tag


def test_entities_only_unescaped_when_stripping_html():
    assert normalize_text("fish &amp; chips &#233;") == "fish &amp; chips &#233;"
    assert normalize_text("fish &amp; chips &#233; &nbsp;x", strip_html=True) == "fish & chips é x"


def test_clean_example_messages_keeps_metadata():
    ex = Example(
        messages=[
            {"role": "user", "content": "  Hi<br />there  "},
            {"role": "assistant", "content": "Hello&amp;bye", "weight": 0},
            {"role": "assistant", "content": "ok\u200b", "weight": 1},
        ],
        label="greet", source="data.jsonl", line=7,
    )
    out = clean_example(ex, strip_html=True, normalize=True)
    assert out is not ex
    assert out.messages == [
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello&bye", "weight": 0},
        {"role": "assistant", "content": "ok", "weight": 1},
    ]
    assert (out.label, out.source, out.line, out.text) == ("greet", "data.jsonl", 7, None)
    assert ex.messages[0]["content"] == "  Hi<br />there  "  # input untouched


def test_clean_example_text_modes():
    ex = Example(text="  <i>Plain</i>   text  ", source="a.txt", line=2)
    assert clean_example(ex, strip_html=False, normalize=True).text == "<i>Plain</i> text"
    assert clean_example(ex, strip_html=True, normalize=False).text == "  Plain   text  "
    unchanged = clean_example(ex, strip_html=False, normalize=False)
    assert unchanged.text == ex.text and unchanged.line == 2


def test_unclosed_script_or_comment_keeps_following_text():
    assert normalize_text("use a <script> tag to run code", strip_html=True) == "use a tag to run code"
    assert normalize_text("a <!-- b", strip_html=True) == "a <!-- b"
    assert normalize_text("<script>x</script>keep<script>y", strip_html=True) == "keepy"
