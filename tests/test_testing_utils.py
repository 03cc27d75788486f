import pytest

from factorcl_hf.testing_utils import markdown_code_blocks


def test_markdown_code_blocks_reads_a_sections_fences_dedented_and_not_comments_as_headings():
    text = ("# Top\n```python\n# not a heading\nx = 1\n```\n## Use\n* item:\n\n  ```bash\n  ls photos/\n  ```\n"
            "### Deeper\n```python\nprint(2)\n```\n## Next\n```bash\nnot this\n```\n")
    assert markdown_code_blocks(text, "Use") == [("bash", "ls photos/\n"), ("python", "print(2)\n")]
    assert markdown_code_blocks(text, "Top")[0] == ("python", "# not a heading\nx = 1\n")
    assert len(markdown_code_blocks(text)) == 4
    with pytest.raises(ValueError, match="no heading 'Missing'"):
        markdown_code_blocks(text, "Missing")
