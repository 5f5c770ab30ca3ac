from ocrloop import distributed

if __name__ == "__main__":  # processes started by spawn or forkserver import this module without running the CLI
    distributed.pin_to_own_cores()  # before torch starts its threads, which inherit the affinity
    from ocrloop.cli import main

    main()
