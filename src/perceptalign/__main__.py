from perceptalign.cli import main

main()
