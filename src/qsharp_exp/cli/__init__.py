"""The command-line programs besides `python -m qsharp_exp` (__main__.py): each module's `main` is a console
command (pyproject.toml's [project.scripts])."""
