"""Processing help texts: rich text that renders whole.

QGIS shows `shortHelpString()` as rich text (HTML): a literal `<name>` or `<4.11` is read as a tag
and vanishes with what follows. Every piece of plain text goes through `html.escape`; the help
then lists each parameter with its id, its default and the outputs, so a script writer sees them.
"""
from html import escape

from qgis.core import QgsProcessingParameterEnum


def _default_text(param):
    default = param.defaultValue()
    if isinstance(param, QgsProcessingParameterEnum):
        options = param.options()
        if isinstance(default, int) and 0 <= default < len(options):
            return options[default]
        return None if default in (None, "") else str(default)
    if default is None or default == "":
        return None
    if isinstance(default, bool):
        return "yes" if default else "no"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def help_html(intro, parameters, outputs=(), notes=()):
    """Help text: `intro` and `notes` (plain text paragraphs), then one line per parameter definition
    ("ID: description, default x") and per output definition."""
    parts = [f"<p>{escape(intro)}</p>"]
    parts += [f"<p>{escape(n)}</p>" for n in notes]
    rows = []
    for p in parameters:
        default = _default_text(p)
        extra = []
        if isinstance(p, QgsProcessingParameterEnum):
            extra.append("one of " + ", ".join(p.options()))
        if default is not None:
            extra.append(f"default {default}")
        elif p.flags() & p.FlagOptional:
            extra.append("optional")
        rows.append(f"<li><b>{escape(p.name())}</b>: {escape(p.description())}"
                    + (f" ({escape('; '.join(extra))})" if extra else "") + "</li>")
    parts.append("<p><b>Parameters</b></p><ul>" + "".join(rows) + "</ul>")
    if outputs:
        parts.append("<p><b>Results</b></p><ul>" + "".join(
            f"<li><b>{escape(o.name())}</b>: {escape(o.description())}</li>" for o in outputs) + "</ul>")
    return "".join(parts)
