"""The report: tables, acceptance checks, the page and the plots, from the stage stamps only."""
