import os
import sys

from studio.cli import main

code = main()
if code == 130:
    # Ctrl+C: the download threads would finish their files before the interpreter could exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
