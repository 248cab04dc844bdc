"""The documents' python3 helpers end here: ``<subcommand> ARGS...`` runs ``cmd_<subcommand>``.

Pasted last into the checkpoint and the restore document (after ``lib/checkpoint_helper.py`` or
``lib/restore_helper.py``, whose ``cmd_*`` functions and ``Fail`` share its namespace). A ``Fail`` prints its
message as the only stdout line and exits with its code; anything else is a bug (a traceback, ScriptFailed).
"""

import json
import sys


def cmd_failline(error, message):
    print(json.dumps({"result": "failed", "error": error, "message": message}))


COMMANDS = {name[4:]: fn for name, fn in globals().items() if name.startswith("cmd_")}

if __name__ == "__main__":
    try:
        COMMANDS[sys.argv[1]](*sys.argv[2:])
    except Fail as exc:  # noqa: F821 - the helper pasted above defines it
        print(str(exc))
        sys.exit(exc.code)
