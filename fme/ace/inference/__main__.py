from fme.ace.inference.main import main

main()
