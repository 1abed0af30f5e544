"""The ``convdsl`` subcommands (``handlers``), the tables they print (``tables``) and the
input and output files they read and write (``files``); ``convdsl.cli`` parses the command line
and runs them.
"""
