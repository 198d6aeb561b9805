"""The family boundary: outside a family's own file, the tiny builders and the model registry, the product
never names a model family (a second family is a new file, not a change to the trainer or the app)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"dreamrelation/models/mochi.py", "dreamrelation/models/wan.py", "dreamrelation/models/tiny_random.py",
           "dreamrelation/models/__init__.py"}
FAMILY_NAMES = re.compile(r"mochi|wan(?:pipeline|transformer|specification| ?2\.[12]|-ai)|umt5|ti2v|a14b", re.IGNORECASE)


def test_no_family_is_named_outside_the_models_that_define_it():
    product = [REPO / "app.py", *(REPO / "ui").rglob("*.py"), *(REPO / "dreamrelation").rglob("*.py")]
    found = []
    for path in product:
        relative = str(path.relative_to(REPO))
        if relative in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FAMILY_NAMES.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)
