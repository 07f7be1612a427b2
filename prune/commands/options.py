"""What the subcommands share: one-line usage errors, and options checked against the recipe schema
(an option that shares a recipe key takes that key's range and choices)."""

from __future__ import annotations

from ..errors import PruneError


def usage(msg: str) -> PruneError:
    from ..errors import ConfigError

    return ConfigError(msg)


# Options a subcommand shares with a recipe key take their range (and choices) from the recipe schema
# (`prune/recipe.py`), so `--opset` and `export.opset`, `--repeats` and `bench.repeats`, ... cannot disagree.
def schema_field(section: str, field: str):
    from ..recipe import Recipe, _section

    cls = _section(Recipe.model_fields[section].annotation)
    return cls, cls.model_fields[field]


def choices_of_list(section: str, field: str) -> list[str]:
    """The values a recipe key of type `list[Literal[...]]` allows."""
    import typing

    return list(typing.get_args(typing.get_args(schema_field(section, field)[1].annotation)[0]))


def choices(section: str, field: str) -> list[str]:
    """The values a recipe key of type `Literal[...]` allows, for an option's `choices`."""
    import typing

    return list(typing.get_args(schema_field(section, field)[1].annotation))


def field_range(info) -> str | None:
    """A field's numeric bounds in words ("at least 1", "in [0, 1)"), from its constraints."""
    bound = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in info.metadata
             if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}
    low = ("[", bound["ge"]) if "ge" in bound else ("(", bound["gt"]) if "gt" in bound else None
    high = (bound["le"], "]") if "le" in bound else (bound["lt"], ")") if "lt" in bound else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"at least {low[1]}" if low[0] == "[" else ("positive" if low[1] == 0 else f"more than {low[1]}")
    if high:
        return f"at most {high[0]}" if high[1] == "]" else f"less than {high[0]}"
    return None


def check_options(args, section: str, *fields: str, flags: dict[str, str] | None = None,
                   values: dict | None = None) -> None:
    """Validate the options behind `fields` (`args.<field>`, or `values[field]`; flag `--field-name` unless
    `flags` says otherwise) with the recipe section's own field constraints: one ConfigError naming the flag,
    its allowed range and the recipe key that shares it."""
    from pydantic import ValidationError

    flags, given = flags or {}, {f: (values or {}).get(f, getattr(args, f, None)) for f in fields}
    cls = schema_field(section, fields[0])[0]
    try:
        cls.model_validate({f: v for f, v in given.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0])
        flag = flags.get(field, "--" + field.replace("_", "-"))
        allowed = field_range(cls.model_fields[field])
        value = given[field]
        what = f"must be {allowed}" if allowed else err["msg"].removeprefix("Value error, ").lower()
        raise usage(f"{flag} {what}, not {value} (the same range as recipe key {section}.{field})") from None
