"""The ``edgeserve`` command line: one Typer app, one sub-app per tier or task.

Commands only parse arguments, build the typed config and call into the packages; the
heavy imports (torch, onnxruntime) happen inside the command that needs them, so
``edgeserve --help`` stays fast and the edge install never imports training code.
"""
