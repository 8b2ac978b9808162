from fme.ace.train.main import main

main()
