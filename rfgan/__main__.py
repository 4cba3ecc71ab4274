from rfgan.cli import main

raise SystemExit(main())
