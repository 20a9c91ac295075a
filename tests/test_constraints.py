"""The tables are reproducible only if a fresh clone installs the versions they were measured with:
every runtime dependency is pinned in constraints.txt, which `make install` uses."""
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_runtime_dependency_is_pinned():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    required = {name(r) for r in setup["options"]["install_requires"].splitlines() if r.strip()} - {"torch"}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version = line.split("==")
            pins[name(package)] = version
    assert required <= set(pins), f"not pinned in constraints.txt: {sorted(required - set(pins))}"
    assert "-c constraints.txt -e ." in (ROOT / "Makefile").read_text()
