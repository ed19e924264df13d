"""
The ``twistd capserv`` daemon: options parsed into settings, the service with
its drain and graceful stop, worker supervision, the reactor's choice and the
system glue (open-file limit, systemd notification), and the log observers.
"""
