"""Executors: where the attempts of command and python steps run when not on this machine."""
