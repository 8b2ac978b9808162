from fme.core.process_resources import restart_with_huge_pages

restart_with_huge_pages()  # before torch is imported: it re-executes the process

from fme.ace.train.main import main  # noqa: E402

main()
