"""``python -m cmf_airflow.server``: run the central CMF server."""

import sys

from cmf_airflow.server.cli import main

sys.exit(main())
