"""Convert between the M³D release layout and BRAT standoff annotation (plus YOLO frame labels).

The conversion is `modeling_m3d.brat` (its docstring describes the BRAT folder layout)::

    python dataset_script/import_brat.py --brat_dir B --output_dir OUT --lang en --split dev
    python dataset_script/import_brat.py export --data_dir DIR --output_dir B --lang en
"""

from modeling_m3d.brat import main

if __name__ == "__main__":
    main()
