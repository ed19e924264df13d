"""The ``twistd capserv`` daemon: options, service, workers, system glue and log observers."""
