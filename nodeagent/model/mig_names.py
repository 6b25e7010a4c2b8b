"""MIG profile names as mig-parted and go-nvlib write them: ``[Nc.]Mg.Kgb[+attr,...|-attr,...]``. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProfileName:
    """A MIG profile name as mig-parted and go-nvlib write it: ``[Nc.]Mg.Kgb[+attr,...|-attr,...]``.

    ``1g.10gb`` is a GPU-instance profile (its one compute instance spans it); ``1c.3g.20gb`` is a
    compute instance of 1 compute slice inside a ``3g.20gb`` GPU instance. ``7c.7g.40gb`` and ``7g.40gb``
    are the same profile (the canonical name drops ``Nc.`` when N is the GPU instance's size, as go-nvlib's
    ``String`` does). ``+me`` (media extensions) and ``-me`` (none) belong to the GPU instance:
    ``1c.1g.5gb+me`` is a 1-slice compute instance of a ``1g.5gb+me`` GPU instance."""

    compute: int
    """N: compute slices of the compute instance (M when the name has no ``Nc.``)."""
    gpu: int
    """M: compute slices of the GPU instance (the ``Mg``)."""
    memory_gb: int
    attributes: tuple[str, ...] = ()
    negated: bool = False
    """True for the ``-attr`` form (``1g.10gb-me``: a profile without media extensions)."""

    @classmethod
    def parse(cls, text: str) -> ProfileName:
        """ValueError with the reason when ``text`` is not a profile name (go-nvlib's rules)."""
        if not isinstance(text, str) or not text:
            raise ValueError("empty profile name")
        plus, minus = text.split("+", 1), text.split("-", 1)
        if len(plus) == 2 and len(minus) == 2:
            raise ValueError(f"{text!r} has both '+' and '-' attributes")
        head, attrs_text = text, None
        if len(plus) == 2:
            head, attrs_text = plus
        elif len(minus) == 2:
            head, attrs_text = minus
        fields = head.split(".")
        if len(fields) == 3:
            compute, gpu, gb = _field(fields[0], "c", text), _field(fields[1], "g", text), _field(fields[2], "gb", text)
        elif len(fields) == 2:
            gpu, gb = _field(fields[0], "g", text), _field(fields[1], "gb", text)
            compute = gpu
        else:
            raise ValueError(f"{text!r}: expected Mg.Kgb or Nc.Mg.Kgb (e.g. 1g.10gb, 1c.3g.20gb)")
        if compute < 1 or gpu < 1 or gb < 1:
            raise ValueError(f"{text!r}: slice counts and memory must be at least 1")
        if compute > gpu:
            raise ValueError(
                f"{text!r}: a compute instance ({compute}c) cannot be larger than its GPU instance ({gpu}g)"
            )
        attributes: tuple[str, ...] = ()
        if attrs_text is not None:
            attributes = _attributes(attrs_text, text)
        return cls(compute, gpu, gb, attributes, negated=attrs_text is not None and len(minus) == 2)

    @property
    def suffix(self) -> str:
        if not self.attributes:
            return ""
        return ("-" if self.negated else "+") + ",".join(self.attributes)

    @property
    def gpu_instance(self) -> str:
        """The GPU-instance profile's name: ``1c.1g.5gb+me`` → ``1g.5gb+me``."""
        return f"{self.gpu}g.{self.memory_gb}gb{self.suffix}"

    @property
    def is_compute_instance(self) -> bool:
        """True when it names a compute instance smaller than its GPU instance."""
        return self.compute != self.gpu

    def __str__(self) -> str:
        return self.gpu_instance if not self.is_compute_instance else f"{self.compute}c.{self.gpu_instance}"


def _field(text: str, unit: str, whole: str) -> int:
    if not text.endswith(unit) or not text[: -len(unit)].isdigit():
        raise ValueError(f"{whole!r}: expected a number followed by {unit!r}, got {text!r}")
    return int(text[: -len(unit)])


def _attributes(text: str, whole: str) -> tuple[str, ...]:
    attrs = text.split(",")
    seen: set[str] = set()
    for a in attrs:
        if not a:
            raise ValueError(f"{whole!r}: empty attribute")
        if a in seen:
            raise ValueError(f"{whole!r}: attribute {a!r} given twice")
        if a[0].isdigit() or a[0] == "." or a[-1] == ".":
            raise ValueError(f"{whole!r}: attribute {a!r} must not start with a digit or start/end with a dot")
        if not all(c.isascii() and (c.isalnum() or c == ".") for c in a):
            raise ValueError(f"{whole!r}: attribute {a!r} may hold only letters, digits and dots")
        seen.add(a)
    return tuple(attrs)


def canonical_name(name: str) -> str:
    """The canonical spelling of a profile name (``7c.7g.40gb`` → ``7g.40gb``); unparsable names unchanged."""
    try:
        return str(ProfileName.parse(name))
    except ValueError:
        return name


def gpu_instance_name(name: str) -> str:
    """The GPU-instance profile of a (compute-instance) profile name; unparsable names unchanged."""
    try:
        return ProfileName.parse(name).gpu_instance
    except ValueError:
        return name
