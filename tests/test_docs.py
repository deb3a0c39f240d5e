"""The docs state what was measured and how the software behaves: no words about how the work was judged
(a bar, a cut-off), no unnamed machines ("this machine"), no relative dates."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JUDGING = re.compile(r"threshold|criteri|this machine|earlier today|\blease", re.I)


def test_docs_use_no_judging_words_and_no_unnamed_machines():
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "experiments").rglob("*.md"),
             *(ROOT / "experiments").rglob("*.py")]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in files
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if JUDGING.search(line)]
    assert not found, "\n".join(found)
