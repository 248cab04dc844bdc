"""The ``autostop`` command line: tag instances, explain decisions, read run records, retry executions, report."""
