"""Seeing the swarm: the live dashboard, instance logs, metrics and progress.

Room: view.

``snapshot`` gathers plain data (store, pool state file, psutil; read-only and
bounded), ``procstats`` is its psutil side (and that of ``metrics``), ``dashboard``
turns one snapshot into a rich renderable, ``live`` runs the refresh loop and owns the
terminal, ``metrics`` computes figures from stored events (pure functions), ``logtail``
reads and follows an instance's log, ``progress`` gives other commands a TTY-only
progress bar, and ``plan_table`` is the live table of ``run``. No click here:
``cli/view_cmds.py`` is the command layer.
"""
