from ocrloop.cli import main

if __name__ == "__main__":  # processes started by spawn or forkserver import this module without running the CLI
    main()
