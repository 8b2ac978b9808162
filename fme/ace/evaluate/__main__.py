from fme.ace.evaluate.main import main

main()
