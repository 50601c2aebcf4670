"""Style presets: ``presets/styles.toml`` wraps a prompt (and adds to its negative) by template."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

STYLES_FILE = Path(__file__).resolve().parent.parent.parent / "presets" / "styles.toml"
NO_STYLE = "none"


@dataclass(frozen=True)
class Style:
    id: str
    label: str
    prompt: str
    negative: str = ""

    def apply(self, prompt: str, negative: str, supports_negative: bool) -> tuple[str, str]:
        """The prompt inside this style's template; its negative joins the user's where the model takes one."""
        styled = self.prompt.replace("{prompt}", prompt) if self.prompt else prompt
        if supports_negative and self.negative:
            negative = f"{negative}, {self.negative}" if negative else self.negative
        return styled, negative


def load_styles(path: Path = STYLES_FILE) -> dict[str, Style]:
    """``presets/styles.toml`` with "no style" first."""
    data = tomllib.loads(path.read_text())
    styles = {NO_STYLE: Style(NO_STYLE, "No style", "{prompt}")}
    for style_id, table in data.get("styles", {}).items():
        styles[style_id] = Style(id=style_id, **table)
    return styles
