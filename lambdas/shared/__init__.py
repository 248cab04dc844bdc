"""Code shared by the autostop functions.

Importing it turns pydantic's plugins off for the process (``PYDANTIC_DISABLE_PLUGINS=__all__``, unless already
set): the functions use none, and looking for them reads the metadata of every installed distribution when the
first model is built (about 20 ms of a cold start with this repository's development packages installed).
"""

import os

os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
