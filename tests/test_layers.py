"""The package reads top-down (README "Architecture"): no module imports one of a higher layer.

    commands -> serve, batch -> runtime, engines, export, training, evaluation, benchmark -> pipeline, data
    -> modeling, loading -> kernels, config, errors, files

Every import counts, also the ones inside functions (lazy imports are still dependencies)."""
from __future__ import annotations

import ast
from pathlib import Path

import vita_deploy

PACKAGE = Path(vita_deploy.__file__).parent
LAYERS = [  # lowest first: (layer name, top-level modules/folders of vita_deploy in it)
    ("base", {"kernels", "config", "errors", "files", "__init__"}),
    ("modeling", {"modeling", "loading"}),
    ("pipeline", {"pipeline", "data"}),
    ("deployment", {"runtime", "engines", "export", "training", "evaluation", "benchmark"}),
    ("services", {"serve", "batch"}),
    # the commands, `vita-deploy` itself, and the `python -m vita_deploy.<command>` shims of the earlier spelling
    ("commands", {"commands", "__main__", "infer", "verify", "evaluate", "train", "demo"}),
]
RANK = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}


def _rank(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "vita_deploy"
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in RANK, f"{module}: put vita_deploy.{top} in a layer (tests/test_layers.py LAYERS and README)"
    return RANK[top]


def _is_script_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`: what runs only when the module is a script (an entry point, not a dependency)."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every `vita_deploy` import of the file, in functions too, except in its script block (`python -m` shims)."""
    tree = ast.parse(path.read_text())
    tree.body = [node for node in tree.body if not _is_script_block(node)]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("vita_deploy"):
            names = [node.module]
            if node.module == "vita_deploy":  # `from vita_deploy import rle`: a submodule; `import __version__`: not
                names = [f"vita_deploy.{a.name}" if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()
                         else "vita_deploy" for a in node.names]
            out += [(n, node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("vita_deploy")]
    return out


def test_every_folder_is_in_a_layer_and_no_module_imports_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py" and path.parent != PACKAGE:  # `python -m vita_deploy.serve`: a script only
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for target, line in _imports(path):
            if _rank(target) > _rank(module):
                violations.append(f"{module} (line {line}) imports {target}")
    assert violations == []
