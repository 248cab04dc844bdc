"""autostop's on-instance program ends here: ``<subcommand> ARGS...`` runs ``main_<subcommand>`` (lib/instance.py ``run``).

Pasted last into every document, after the modules its subcommand needs: the probe document's ``probe``, the
checkpoint document's ``checkpoint``, the restore document's ``restore``, the preflight document's ``preflight`` (and
``select``). Run on its own (``python3 infra/documents/lib/dispatch.py select DIR``), it imports them all.
"""

import sys

if "run" not in globals():  # run on its own; a document pastes the modules above
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    from checkpoint_helper import main_checkpoint  # noqa: F401 - found through globals()
    from instance import run
    from preflight import main_preflight, main_select  # noqa: F401
    from probe import main_probe  # noqa: F401
    from restore_helper import main_restore  # noqa: F401

if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:], globals()))
