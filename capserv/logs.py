"""
The log observers operators name on twistd's command line
(``--logger=capserv.logs.json_lines``, ``--logger=capserv.logs.text_lines``),
at the address the Containerfile, the systemd unit and the Kubernetes
manifest use.
"""

from capserv.daemon.logs import json_lines, text_lines, twisted_text

__all__ = ["json_lines", "text_lines", "twisted_text"]
