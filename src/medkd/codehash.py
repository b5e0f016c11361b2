"""Which source files a pipeline step runs, and a hash of them, so that Snakemake re-runs what code changed.

Snakemake re-runs a job when its params change. Every rule passes ``code=<hash>`` as a param: the hash of
the source files its ``medkd <step>`` command can execute, found statically (no import, so the Snakefile
stays fast and torch-free):

* from :mod:`medkd.cli`, not the whole file (so editing one subcommand does not re-run the others):
  ``cmd_<step>``, ``main`` and every module-level function, class or constant of the CLI they use
  (transitively), and the step's part of ``build_parser`` (its ``add("<step>", ...)`` block with the
  argparse defaults, the shared prelude and the nested helpers the block calls);
* every ``medkd`` module that body imports, and transitively every ``medkd`` module those import
  (imports inside functions included: a lazy import is still code the step may run);
* for registry packages (:mod:`medkd.models`, :mod:`medkd.distill`, :mod:`medkd.data.formats`: packages
  whose ``__init__`` creates a :class:`medkd.registry.Registry`), only the package's ``__init__`` and
  the modules that register the names the job uses (its architecture(s), its loss terms, its format),
  found by scanning for ``@<REGISTRY>.register("name")`` decorators. So editing ``distill/contrastive.py``
  re-runs the students whose loss terms use ``infonce``/``pmd`` (and what follows them), not the others;
  editing the engine (``train.py``) re-runs every training job; editing ``report.py`` re-runs tables
  and later.

What is hashed is each piece's syntax tree (``ast.dump`` without line numbers), with docstrings removed:
comments, docstrings, blank lines and line breaks change no hash, so editing them re-runs nothing; any edit
of code does. The dump's format belongs to the Python version, so another interpreter gives other hashes
(and re-runs), as another Python may also compute differently.

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


def _tree(path: Path) -> ast.Module:
    """The file's syntax tree without docstrings (nothing here reads them; :func:`normalised` hashes this),
    parsed once per version of the file (cached on its modification time and size)."""
    return _parsed(*_version(path))


def _version(path: Path) -> tuple[Path, int, int]:
    """``(path, modification time in ns, size)``: the cache key of one version of a file."""
    stat = path.stat()
    return path, stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))


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


@lru_cache(maxsize=None)
def _file_imports(path: Path, mtime_ns: int, size: int, name: str) -> tuple[str, ...]:
    """:func:`imported_modules` of a whole file, once per version of it."""
    return tuple(sorted(imported_modules(_parsed(path, mtime_ns, size), name, path.name == "__init__.py")))


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
        todo += _file_imports(*_version(path), name)
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


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Remove, in place, the docstring of every module, class and function under ``tree``; return it."""
    for sub in ast.walk(tree):
        if isinstance(sub, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = sub.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                sub.body = body[1:] or [ast.Pass()]
    return tree


def normalised(node: ast.AST) -> str:
    """The code of ``node`` as hashed: its syntax tree without docstrings (removed in place), comments or
    positions."""
    return ast.dump(_strip_docstrings(node), include_attributes=False)


@lru_cache(maxsize=None)
def _normalised_version(path: Path, mtime_ns: int, size: int) -> str:
    """:func:`normalised` of one version of a file (its tree is already without docstrings)."""
    return ast.dump(_parsed(path, mtime_ns, size), include_attributes=False)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _defined_steps(stmt: ast.stmt) -> list[str]:
    """The subcommands a statement of ``build_parser`` defines: ``sp = add("<step>", ...)``, or a ``for``
    loop over tuples whose first items name steps and whose body calls ``add`` (``cache`` and ``infer``)."""
    if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "add"
            and stmt.value.args and isinstance(stmt.value.args[0], ast.Constant)):
        return [stmt.value.args[0].value]
    if isinstance(stmt, ast.For) and "add" in {n.func.id for n in ast.walk(stmt) if isinstance(n, ast.Call)
                                              and isinstance(n.func, ast.Name)}:
        items = stmt.iter.elts if isinstance(stmt.iter, (ast.Tuple, ast.List)) else []
        return [item.elts[0].value for item in items if isinstance(item, (ast.Tuple, ast.List)) and item.elts
                and isinstance(item.elts[0], ast.Constant) and isinstance(item.elts[0].value, str)]
    return []


def parser_part(build_parser: ast.FunctionDef, step: str) -> list[ast.stmt]:
    """The statements of ``build_parser`` that shape ``step``'s arguments: the prelude (before the first
    subcommand) without its nested functions, the nested functions the step's block uses (``add`` always),
    and the step's block: from the statement that defines it (:func:`_defined_steps`) to the next one."""
    body = build_parser.body
    starts = [i for i, stmt in enumerate(body) if _defined_steps(stmt)]
    first = starts[0] if starts else len(body)
    nested = {stmt.name: stmt for stmt in body[:first] if isinstance(stmt, ast.FunctionDef)}
    prelude = [stmt for stmt in body[:first] if not isinstance(stmt, ast.FunctionDef)]
    block: list[ast.stmt] = []
    for k, i in enumerate(starts):
        if step in _defined_steps(body[i]):
            end = starts[k + 1] if k + 1 < len(starts) else len(body)
            block = [stmt for stmt in body[i:end] if not isinstance(stmt, ast.Return)]
    used = {"add"} | {name for stmt in block for name in _names(stmt)}
    helpers = [nested[name] for name in sorted(nested) if name in used]
    return prelude + helpers + block


def command_source(step: str) -> tuple[str, set[str]]:
    """(the normalised CLI code ``medkd <step>`` runs, the medkd modules that code imports).

    The CLI code: ``cmd_<step>``, ``main``, every module-level definition of :mod:`medkd.cli` they refer to
    by name (transitively; ``build_parser`` contributes :func:`parser_part` of the step only).
    """
    cli = module_file(f"{PACKAGE}.cli")
    tree = _tree(cli)
    func = f"cmd_{step.replace('-', '_')}"
    defs: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in _names(target):
                    defs[name] = node
    if func not in defs:
        raise KeyError(f"medkd.cli has no {func} (step {step!r})")
    parser = parser_part(defs["build_parser"], step) if "build_parser" in defs else []
    todo, seen = [func, "main"], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        if name == "build_parser":
            todo += [n for stmt in parser for n in _names(stmt)]
        else:
            todo += list(_names(defs[name]))
    pieces = [normalised(defs[name]) for name in sorted(seen) if name != "build_parser"]
    pieces += [normalised(stmt) for stmt in parser]
    modules: set[str] = set()
    for name in seen - {"build_parser"}:
        modules |= imported_modules(defs[name], f"{PACKAGE}.cli", False)
    for stmt in parser:
        modules |= imported_modules(stmt, f"{PACKAGE}.cli", False)
    return "\n".join(pieces), modules


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
        h.update(str(path.relative_to(SRC)).encode() + b"\0" + _normalised_version(*_version(path)).encode() + b"\0")
    return h.hexdigest()[:12]


def code_hash(step: str, **names: Iterable[str]) -> str:
    """12 hex digits of the SHA-256 of the step's CLI code and the code of :func:`step_files`, each
    :func:`normalised` (no docstrings, comments or positions)."""
    key = tuple(sorted((kind, tuple(sorted(set(values)))) for kind, values in names.items()))
    return _code_hash(step, key)
