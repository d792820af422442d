#!/usr/bin/env python3
"""Every relative link in the repository's Markdown resolves to a file in
the repository, and nothing points at files outside it (such as the
`shared/spec` this project started from). Exits 1 naming each bad link."""
import re
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
files = subprocess.run(
    ["git", "ls-files", "-co", "--exclude-standard"],
    cwd=root, capture_output=True, text=True, check=True,
).stdout.split()
link = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
bad = []
for name in files:
    path = root / name
    if not path.is_file() or "node_modules" in path.parts:
        continue
    text = path.read_text(errors="replace")
    if "shared/spec" in text and name != "scripts/check-links.py":
        bad.append(f"{name}: refers to shared/spec, which is outside the repository (use docs/)")
    if not name.endswith(".md"):
        continue
    for target in link.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        file_part = target.split("#", 1)[0]
        resolved = (path.parent / file_part).resolve()
        if root not in resolved.parents and resolved != root:
            bad.append(f"{name}: link {target} leaves the repository")
        elif not resolved.exists():
            bad.append(f"{name}: link {target} does not resolve")
for line in bad:
    print(f"error: {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
