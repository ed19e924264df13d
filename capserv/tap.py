"""
The twistd plugin's target (``twisted_plugins/capserv_plugin.py`` names this
module): the ``twistd capserv`` options and the service they make.
"""

from capserv.daemon.options import Options, makeService

__all__ = ["Options", "makeService"]
