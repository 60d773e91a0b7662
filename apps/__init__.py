"""The applications above the two services: the `a3c` command, the local launcher (`a3c train`), and the tools
that read what a run leaves behind (evaluate, play, export, plot, health)."""
