from rfgan.cli import main

if __name__ == "__main__":  # not when a spawned child process (rfgan bench) imports this module
    raise SystemExit(main())
