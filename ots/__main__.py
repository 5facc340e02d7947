from ots.cli import main

raise SystemExit(main())
