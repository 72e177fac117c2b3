"""pass@k per language and the table DeepSeek Coder's README prints: languages as columns, then their average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dscbatch.executor.evaluation import Report
from dscbatch.executor.languages import DEEPSEEK_TABLE, LANGUAGES


@dataclass
class LanguageReports:
    reports: dict[str, Report]  # by language code, in the order run
    extract: str  # how instruct answers' code was taken (deepseek or block), or "completion"

    def ordered(self) -> list[str]:
        """DeepSeek's eight first, in their table's order, then the others in executor/languages.py's order."""
        order = [*DEEPSEEK_TABLE, *(code for code in LANGUAGES if code not in DEEPSEEK_TABLE)]
        return [code for code in order if code in self.reports]

    def table(self) -> str:
        """One row per pass@k that every language has, in percent as DeepSeek prints it, and the average."""
        codes = self.ordered()
        names = [LANGUAGES[code].full_name if code != "cpp" else "C++" for code in codes]
        ks = [k for k in self.reports[codes[0]].pass_at_k() if all(k in self.reports[c].pass_at_k() for c in codes)]
        header = ["", *names, "Avg"]
        rows = [header]
        for k in ks:
            values = [100 * self.reports[code].pass_at_k()[k] for code in codes]
            rows.append([k, *(f"{value:.1f}" for value in values), f"{sum(values) / len(values):.1f}"])
        rows.append(["problems", *(str(len(self.reports[code].problems)) for code in codes), ""])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                         for row in rows)

    def as_dict(self) -> dict[str, Any]:
        codes = self.ordered()
        average = {k: sum(self.reports[code].pass_at_k()[k] for code in codes) / len(codes)
                   for k in self.reports[codes[0]].pass_at_k() if all(k in self.reports[c].pass_at_k() for c in codes)}
        return {"extract": self.extract, "average": average,
                "languages": {code: self.reports[code].as_dict() for code in codes}}
