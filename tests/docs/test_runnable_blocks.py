"""The extractor behind the executable docs (pure; no server)."""

import pytest

from tests.docs.runnable_blocks import Block, DocFormatError, runnable_blocks

PAGE = """# Title

```sh
echo not marked
```

<!-- runnable -->
```sh
curl -fsS 127.0.0.1:8000/healthz
```

<!-- runnable -->

~~~python
print("hi")
~~~

- list item:
  <!-- runnable -->
  ```js
  console.log('live');
  ```
"""


def test_only_marked_blocks_in_order_with_their_language_and_line():
    blocks = runnable_blocks(PAGE, "page.md")
    assert [(b.line, b.language, b.code) for b in blocks] == [
        (8, "sh", "curl -fsS 127.0.0.1:8000/healthz\n"),
        (14, "python", 'print("hi")\n'),
        (20, "js", "console.log('live');\n"),
    ]
    assert blocks[0].name == "page.md:8:sh"


def test_blocks_are_pointed_at_the_test_server():
    block = Block("p.md", 1, "sh", "curl http://127.0.0.1:8000/x && curl 127.0.0.1:8000/y\n")
    assert block.for_server("127.0.0.1:5123") == "curl http://127.0.0.1:5123/x && curl 127.0.0.1:5123/y\n"


@pytest.mark.parametrize("page, message", [
    ("<!-- runnable -->\ntext\n```sh\nx\n```\n", "must be followed by a fenced code block"),
    ("<!-- runnable -->\n", "must be followed by a fenced code block"),
    ("<!-- runnable -->\n```ruby\nputs 1\n```\n", "runnable block in 'ruby'"),
    ("<!-- runnable -->\n```\nx\n```\n", "no language"),
    ("<!-- runnable -->\n```sh\nx\n", "never closed"),
])
def test_a_marker_that_cannot_be_honoured_is_an_error_not_a_skip(page, message):
    with pytest.raises(DocFormatError, match=message):
        runnable_blocks(page, "bad.md")
