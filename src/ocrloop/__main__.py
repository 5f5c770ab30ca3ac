from ocrloop.cli import main

main()
