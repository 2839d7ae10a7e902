#!/usr/bin/env python3
"""Remove Allure Report 3's Google Analytics tag from a generated report.

Why: Allure 3's report plugins always embed gtag.js and a `gtag('config', ...)` call carrying
the report's id (allure-framework/allure3 issue #476; Allure 2's ALLURE_NO_ANALYTICS opt-out
has no Allure 3 equivalent yet). A hokmdb report describes a production database; opening it
must not call a third party, and on a closed network the request only stalls the page.

Fails closed: if anything of the tag is left after the known blocks are removed (Allure
changed its template), the report is not passed on as clean: exit 1 with what was found.
Usage: strip-report-analytics.py REPORT_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# The two blocks Allure 3.x writes: the loader, then the inline dataLayer/gtag configuration.
LOADER = re.compile(r'<script[^>]*\bsrc="https://www\.googletagmanager\.com/[^"]*"[^>]*>\s*</script>\s*')
CONFIG = re.compile(r"<script>\s*window\.dataLayer\s*=[^<]*?gtag\('config'[^<]*?</script>\s*")
TRACES = ("googletagmanager", "gtag(", "window.dataLayer", "google-analytics")


def strip(html: str) -> tuple[str, list[str]]:
    """The page without the tag, and any trace of it that is still there."""
    cleaned = CONFIG.sub("", LOADER.sub("", html))
    return cleaned, [trace for trace in TRACES if trace in cleaned]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("error: give the generated report's directory, e.g. strip-report-analytics.py allure-report", file=sys.stderr)
        return 2
    pages = sorted(Path(argv[0]).rglob("*.html"))
    if not pages:
        print(f"error: no HTML page in {argv[0]}/: was the report generated?", file=sys.stderr)
        return 2
    for page in pages:
        cleaned, left = strip(page.read_text(encoding="utf-8"))
        if left:
            print(f"error: {page} still carries Google Analytics ({', '.join(left)}) after stripping;"
                  " Allure's template changed: update scripts/strip-report-analytics.py", file=sys.stderr)
            return 1
        page.write_text(cleaned, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
