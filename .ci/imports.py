"""Import every module of the installed `mlsys` and everything its job notebooks import; exit 1 naming what fails.

Run it from outside the repository in an environment built with `pip install .` and no extras (`make check-runtime`),
so that a runtime import that only the dev extras provide fails here instead of in a user's first `make run`."""
import ast, importlib, json, pkgutil, sys, traceback
from pathlib import Path

def job_imports(jobs:Path) -> set[str]:
    "Modules imported by the code cells of the job notebooks in `jobs`."
    names = set()
    for nb in sorted(jobs.glob('*.ipynb')):
        for cell in json.loads(nb.read_text())['cells']:
            if cell['cell_type'] != 'code': continue
            try: tree = ast.parse(''.join(cell['source']))
            except SyntaxError: continue   # a cell with IPython magics: its imports are checked when the job runs
            for node in ast.walk(tree):
                if isinstance(node, ast.Import): names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level: names.add(node.module)
    return names

def main() -> int:
    import mlsys
    from mlsys.pipeline import jobs_dir
    where = Path(mlsys.__file__).resolve().parent
    modules = sorted(m.name for m in pkgutil.walk_packages(mlsys.__path__, 'mlsys.'))
    modules += sorted(job_imports(jobs_dir()) - set(modules))
    failed = []
    for name in modules:
        try: importlib.import_module(name)
        except Exception as e:
            failed.append(name); print(f'FAILED import {name}: {type(e).__name__}: {e}', file=sys.stderr)
            traceback.print_exc(limit=-3)
    print(f'{len(modules) - len(failed)} of {len(modules)} modules import (mlsys from {where}, jobs from {jobs_dir()})')
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
