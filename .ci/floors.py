"""Print the pins of the floors leg: each of the named distributions at the lower bound setup.cfg declares for it.

Reads setup.cfg with the standard library only (it runs before any virtual environment exists).
"""

import configparser
import re
import sys
from pathlib import Path


config = configparser.ConfigParser()
config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
declared = {}
for line in config["options"]["install_requires"].splitlines():
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", line)
    if match:
        declared[match.group(1).lower()] = match.group(2)
pins = []
for name in sys.argv[1:]:
    floor = re.search(r">=\s*([0-9][^,;\s]*)", declared.get(name, ""))
    if floor is None:
        sys.exit(f"setup.cfg declares no lower bound for {name}")
    pins.append(f"{name}=={floor.group(1)}")
print(" ".join(pins))
