"""Which source files a pipeline step runs, and a hash of them, so that Snakemake re-runs what code changed.

Snakemake re-runs a job when its params change. Every rule passes ``code=<hash>`` as a param: the hash of
the source files its ``medkd <step>`` command can execute, found statically (no import, so the Snakefile
stays fast and torch-free):

* the body of ``cmd_<step>`` in :mod:`medkd.cli` (its text, not the whole CLI file, so editing one
  subcommand does not re-run the others);
* every ``medkd`` module that body imports, and transitively every ``medkd`` module those import
  (imports inside functions included: a lazy import is still code the step may run);
* for registry packages (:mod:`medkd.models`, :mod:`medkd.distill`, :mod:`medkd.data.formats`: packages
  whose ``__init__`` creates a :class:`medkd.registry.Registry`), only the package's ``__init__`` and
  the modules that register the names the job uses (its architecture(s), its loss terms, its format),
  found by scanning for ``@<REGISTRY>.register("name")`` decorators. So editing ``distill/contrastive.py``
  re-runs the students whose loss terms use ``infonce``/``pmd`` (and what follows them), not the others;
  editing the engine (``train.py``) re-runs every training job; editing ``report.py`` re-runs tables
  and later.

Edge cases: a registry's ``discover`` imports every module of its package at run time, so a syntax
error in an unrelated model file still breaks a job whose hash did not change; third-party code and
config files are not hashed (the config reaches jobs as params already).
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable

SRC = Path(__file__).resolve().parents[1]  # the directory holding the medkd package
PACKAGE = "medkd"
#: kind of registered name -> registry package
REGISTRIES = {"model": "medkd.models", "loss": "medkd.distill", "format": "medkd.data.formats"}


def module_file(name: str) -> Path | None:
    """The file of module ``name`` (``medkd.x.y``) under :data:`SRC`, or None if there is none."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(node: ast.AST, current: str, is_package: bool) -> set[str]:
    """``medkd`` modules imported anywhere under ``node`` (absolute or relative imports).

    ``from medkd.x import y`` yields ``medkd.x`` and, if it is a module, ``medkd.x.y``.
    """
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            found.update(a.name for a in sub.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(sub, ast.ImportFrom):
            if sub.level:
                base = current.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (sub.level - 1)]
                mod = ".".join(base + ([sub.module] if sub.module else []))
            else:
                mod = sub.module or ""
            if mod.split(".")[0] != PACKAGE:
                continue
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in sub.names if module_file(f"{mod}.{a.name}") is not None)
    return {m for m in found if module_file(m) is not None}


def _is_registry_package(name: str) -> bool:
    return name in REGISTRIES.values()


def closure(modules: Iterable[str]) -> set[Path]:
    """Files of ``modules`` and of every ``medkd`` module they import, transitively (parent packages'
    ``__init__`` included, as Python runs them). Registry packages contribute their ``__init__`` only."""
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = module_file(name)
        if path is None:
            continue
        todo += imported_modules(_tree(path), name, path.name == "__init__.py")
    return {p for p in (module_file(m) for m in seen) if p is not None}


@lru_cache(maxsize=None)
def registered(kind: str) -> dict[str, str]:
    """Registered name -> module of registry ``kind`` (model, loss, format), from the decorators."""
    package = REGISTRIES[kind]
    root = module_file(package)
    out: dict[str, str] = {}
    if root is None:
        return out
    for path in sorted(root.parent.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                for deco in node.decorator_list:
                    if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                            and deco.func.attr == "register" and deco.args
                            and isinstance(deco.args[0], ast.Constant)):
                        out[deco.args[0].value] = _module_name(path)
    return out


def command_source(step: str) -> tuple[str, set[str]]:
    """(source text of ``cmd_<step>`` in medkd.cli, the medkd modules it imports)."""
    cli = module_file(f"{PACKAGE}.cli")
    func = f"cmd_{step.replace('-', '_')}"
    for node in _tree(cli).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return ast.get_source_segment(cli.read_text(), node), imported_modules(node, f"{PACKAGE}.cli", False)
    raise KeyError(f"medkd.cli has no {func} (step {step!r})")


def step_files(step: str, **names: Iterable[str]) -> list[Path]:
    """Source files ``medkd <step>`` runs for a job using the registered ``names`` per kind, e.g.
    ``step_files("train", model=["unet"], loss=["cross_entropy", "kl_div"])``.

    Raises:
        KeyError: an unknown step, kind or registered name.
    """
    _, roots = command_source(step)
    roots = set(roots)
    for kind, values in names.items():
        table = registered(kind)
        for value in values:
            if value not in table:
                raise KeyError(f"no module registers {kind} {value!r}")
            roots.add(table[value])
    return sorted(closure(roots))


@lru_cache(maxsize=None)
def _code_hash(step: str, key: tuple) -> str:
    h = hashlib.sha256()
    text, _ = command_source(step)
    h.update(text.encode())
    for path in step_files(step, **{kind: values for kind, values in key}):
        h.update(str(path.relative_to(SRC)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def code_hash(step: str, **names: Iterable[str]) -> str:
    """12 hex digits of the SHA-256 of ``cmd_<step>``'s text and the contents of :func:`step_files`."""
    key = tuple(sorted((kind, tuple(sorted(set(values)))) for kind, values in names.items()))
    return _code_hash(step, key)
